"""magvit2.compat.LFQ against vector-quantize-pytorch 1.32.0 (pinned in the test extra): its README example with
only the import changed, a matrix of options with shared weights (outputs, indices, losses and input gradients),
eval mode, mask, the DDP average, state_dict round trips, and one-line errors."""

import importlib.metadata
import math

import pytest
import torch
import torch.distributed
import vector_quantize_pytorch as vqp
from torch import nn

import magvit2
from magvit2.compat import LFQ
from magvit2.nn import compat
from tests.tolerance import assert_close_scaled

VQ_VERSION = "1.32.0"


def pair(**kwargs):
    """Theirs and ours from the same seed (same draws, so the same weights), theirs' state_dict loaded into ours."""
    torch.manual_seed(0)
    theirs = vqp.LFQ(**kwargs)
    torch.manual_seed(0)
    ours = LFQ(**kwargs)
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


def run(model, x, seed=None, **forward):
    """Forward with the breakdown, then backward of aux loss + a fixed projection of the output (STE path too)."""
    x = x.clone().requires_grad_(True)
    if seed is not None:
        torch.manual_seed(seed)  # frac_per_sample_entropy draws its token subset from the global generator
    (quantized, indices, aux), breakdown = model(x, return_loss_breakdown=True, **forward)
    weight = torch.linspace(-1, 1, quantized.numel(), dtype=quantized.dtype).view_as(quantized)
    if model.training:
        (aux + (quantized * weight).sum()).backward()
    return quantized.detach(), indices, aux.detach(), [t.detach() for t in breakdown], x.grad


def test_pinned_release():
    assert importlib.metadata.version("vector-quantize-pytorch") == VQ_VERSION


@pytest.mark.parametrize("dim, side", [(16, 32), (18, 8)])
def test_readme_example_with_the_import_changed(dim, side):
    """vector-quantize-pytorch's README LFQ example, run once per package; at 2^18 kept to 64 tokens (theirs builds
    the 64 x 2^18 probabilities)."""
    results = []
    for LFQClass in (vqp.LFQ, LFQ):
        torch.manual_seed(0)
        quantizer = LFQClass(codebook_size=2**dim, dim=dim, entropy_loss_weight=0.1, diversity_gamma=1.0)
        image_feats = torch.randn(1, dim, side, side)
        quantized, indices, entropy_aux_loss = quantizer(image_feats, inv_temperature=100.0)
        assert image_feats.shape == quantized.shape
        assert (quantized == quantizer.indices_to_codes(indices)).all()
        results.append((quantized, indices, entropy_aux_loss))
    (q_theirs, i_theirs, loss_theirs), (q_ours, i_ours, loss_ours) = results
    assert torch.equal(q_ours, q_theirs)
    assert i_ours.dtype == i_theirs.dtype == torch.int64 and torch.equal(i_ours, i_theirs)
    assert abs(loss_ours.item() - loss_theirs.item()) <= 1e-3 * abs(loss_theirs.item())
    assert loss_theirs.item() < -0.1  # a real entropy loss (the diversity term dominates), not a zero


def seq(d, n=24, b=2, scale=0.1):
    return torch.randn(b, n, d) * scale


# name: (constructor kwargs, input, forward kwargs)
CASES = {
    "defaults_sequence": (dict(dim=10), lambda: seq(10), {}),
    "image_low_temperature": (dict(dim=8), lambda: torch.randn(2, 8, 4, 5), dict(inv_temperature=3.0)),
    "video": (dict(dim=6), lambda: torch.randn(1, 6, 3, 4, 4) * 0.05, {}),
    "num_codebooks_2": (dict(dim=12, codebook_size=2**6, num_codebooks=2), lambda: seq(12), {}),
    "keep_num_codebooks_dim": (dict(dim=8, keep_num_codebooks_dim=True), lambda: seq(8), {}),
    "projections": (dict(dim=12, codebook_size=2**5), lambda: torch.randn(2, 12, 3, 3), {}),
    "projections_no_bias_2_codebooks": (
        dict(dim=7, codebook_size=2**4, num_codebooks=2, projection_has_bias=False),
        lambda: seq(7, scale=1.0),
        {},
    ),
    "codebook_scale": (dict(dim=8, codebook_scale=0.5), lambda: seq(8), dict(inv_temperature=20.0)),
    "commitment_and_gamma": (
        dict(dim=8, commitment_loss_weight=0.25, diversity_gamma=2.0, entropy_loss_weight=0.3),
        lambda: seq(8, scale=0.5),
        {},
    ),
    "channel_first_sequence": (dict(dim=8, channel_first=True), lambda: torch.randn(2, 8, 20) * 0.1, {}),
    "bfloat16_input": (dict(dim=8), lambda: seq(8).bfloat16(), {}),
    "softplus_loss": (
        dict(dim=8, experimental_softplus_entropy_loss=True, entropy_loss_offset=3.0),
        lambda: seq(8),
        {},
    ),
    "soft_clamp": (dict(dim=8, soft_clamp_input_value=1.5), lambda: seq(8, scale=2.0), dict(inv_temperature=5.0)),
    "spherical": (dict(dim=8, spherical=True, codebook_scale=2.0), lambda: seq(8), dict(inv_temperature=10.0)),
    "cosine_sim_project_in": (dict(dim=12, codebook_size=2**6, cosine_sim_project_in=True), lambda: seq(12), {}),
    "orthogonal_rotation": (dict(dim=8, orthogonal_rotation=True), lambda: seq(8), {}),
    "straight_through_tanh": (dict(dim=8, straight_through_activation=nn.Tanh()), lambda: seq(8, scale=1.0), {}),
    "frac_per_sample_entropy": (dict(dim=8, frac_per_sample_entropy=0.5), lambda: seq(8), {}),
}


@pytest.mark.parametrize("name", list(CASES))
def test_matches_vector_quantize_pytorch(name):
    kwargs, make_input, forward = CASES[name]
    theirs, ours = pair(**kwargs)
    x = make_input()
    q_t, i_t, aux_t, bd_t, grad_t = run(theirs, x, seed=1, **forward)
    q_o, i_o, aux_o, bd_o, grad_o = run(ours, x, seed=1, **forward)
    assert q_o.shape == q_t.shape == x.shape and q_o.dtype == q_t.dtype
    assert torch.equal(q_o, q_t)
    assert i_o.shape == i_t.shape and torch.equal(i_o, i_t)
    assert aux_o.dtype == aux_t.dtype
    for got, want in zip([aux_o, *bd_o], [aux_t, *bd_t], strict=True):
        torch.testing.assert_close(got.float(), want.float(), rtol=2e-5, atol=2e-6)
    assert bd_t[1].item() > 0.5  # the batch entropy is far from zero: the comparison means something
    assert_close_scaled(grad_o, grad_t.double(), rtol=1e-4, atol=1e-5)
    assert torch.equal(ours.indices_to_codes(i_o), theirs.indices_to_codes(i_t))
    torch.testing.assert_close(
        ours.indices_to_codes(i_o, project_out=False), theirs.indices_to_codes(i_t, project_out=False)
    )


def test_float64_module_without_forced_f32():
    theirs, ours = pair(dim=9, force_quantization_f32=False)
    theirs.double(), ours.double()
    x = seq(9, scale=0.05).double()
    q_t, i_t, aux_t, bd_t, grad_t = run(theirs, x)
    q_o, i_o, aux_o, bd_o, grad_o = run(ours, x)
    assert q_o.dtype == torch.float64 and torch.equal(q_o, q_t) and torch.equal(i_o, i_t)
    assert ours.codebook.dtype == torch.float64 and torch.equal(ours.codebook, theirs.codebook)
    for got, want in zip([aux_o, *bd_o], [aux_t, *bd_t], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert_close_scaled(grad_o, grad_t, rtol=1e-8, atol=1e-10)


def test_per_sample_entropy_keeps_the_log_clamp():
    """Wide distributions (low inverse temperature) put mass on codes with p < 1e-5, where theirs' log clamp departs
    from the true entropy: ours follows the clamp, not the exact entropy of magvit2.ops."""
    theirs, ours = pair(dim=12, commitment_loss_weight=0.5)
    x = seq(12, scale=0.1)
    _, _, _, bd_t, grad_t = run(theirs, x, inv_temperature=10.0)
    _, _, _, bd_o, grad_o = run(ours, x, inv_temperature=10.0)
    exact, _ = magvit2.ops.lfq_entropy(x.reshape(-1, 12), 10.0)
    assert exact.item() - bd_t[0].item() > 1e-3  # the clamp matters here
    torch.testing.assert_close(bd_o[0], bd_t[0], rtol=1e-6, atol=1e-6)
    assert_close_scaled(grad_o, grad_t.double(), rtol=1e-4, atol=1e-5)


def test_eval_mode_has_no_losses_and_no_straight_through():
    theirs, ours = pair(dim=8, commitment_loss_weight=0.25)
    theirs.eval(), ours.eval()
    x = torch.randn(2, 8, 3, 3, requires_grad=True)
    (q_t, i_t, aux_t), bd_t = theirs(x, return_loss_breakdown=True)
    (q_o, i_o, aux_o), bd_o = ours(x, return_loss_breakdown=True)
    assert torch.equal(q_o, q_t) and torch.equal(i_o, i_t)
    assert aux_o.item() == aux_t.item() == 0.0 and all(t.item() == 0.0 for t in bd_o)
    assert not q_o.requires_grad and not q_t.requires_grad  # the codes themselves: no gradient path to x
    assert torch.equal(q_o, ours.indices_to_codes(i_o))


def test_mask_restricts_losses_to_the_masked_tokens():
    """Per-sample entropy and commitment equal theirs with the mask; the batch entropy is that of the masked tokens'
    average, i.e. theirs on the masked tokens alone (theirs with a mask returns the per-sample entropy there)."""
    kwargs = dict(dim=10, codebook_size=2**8, commitment_loss_weight=0.25)
    theirs, ours = pair(**kwargs)
    x = seq(10, n=16, scale=0.5)
    mask = torch.rand(2, 16) > 0.4
    q_t, i_t, _, bd_t, _ = run(theirs, x, mask=mask)
    q_o, i_o, aux_o, bd_o, grad_o = run(ours, x, mask=mask)
    assert torch.equal(q_o, q_t) and torch.equal(i_o, i_t)
    torch.testing.assert_close(bd_o[0], bd_t[0], rtol=1e-5, atol=1e-6)  # per-sample entropy
    torch.testing.assert_close(bd_o[2], bd_t[2], rtol=1e-6, atol=1e-7)  # commitment
    torch.testing.assert_close(bd_t[1], bd_t[0])  # theirs: "batch" entropy = per-sample entropy under a mask

    _, _, aux_m, bd_m, grad_m = run(theirs, x[mask][None])  # theirs on the masked tokens only
    torch.testing.assert_close(bd_o[1], bd_m[1], rtol=1e-5, atol=1e-6)
    assert bd_o[1].item() > bd_o[0].item() + 1.0
    torch.testing.assert_close(aux_o, aux_m, rtol=1e-5, atol=1e-6)
    # the aux loss reaches only the masked tokens (the straight-through term is the same linear map for both)
    x_ = x.clone().requires_grad_(True)
    ours(x_, mask=mask).entropy_aux_loss.backward()
    assert torch.all(x_.grad[~mask] == 0) and x_.grad[mask].abs().amax(-1).min() > 0
    x_m = x[mask][None].clone().requires_grad_(True)
    theirs(x_m).entropy_aux_loss.backward()
    assert_close_scaled(x_.grad[mask], x_m.grad[0].double(), rtol=1e-4, atol=1e-5)


def test_image_mask_in_either_shape():
    ours = LFQ(dim=8, commitment_loss_weight=0.5)
    x = torch.randn(2, 8, 3, 4) * 0.1
    mask = torch.rand(2, 3, 4) > 0.5
    flat = ours(x, return_loss_breakdown=True, mask=mask.flatten(1))[1]
    spatial = ours(x, return_loss_breakdown=True, mask=mask)[1]
    unmasked = ours(x, return_loss_breakdown=True)[1]
    assert all(torch.equal(a, b) for a, b in zip(flat, spatial, strict=True))
    assert not torch.equal(flat.batch_entropy, unmasked.batch_entropy)


def _ddp_worker(rank: int, init_file: str, x_full: torch.Tensor, out: dict) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        _, ours = pair(codebook_size=2**8, num_codebooks=2)
        x = x_full[rank * 2 : rank * 2 + 2].clone().requires_grad_()
        (_, _, aux), breakdown = ours(x, return_loss_breakdown=True)
        aux.backward()
        out[rank] = ([t.detach() for t in breakdown], x.grad)
    finally:
        torch.distributed.destroy_process_group()


def test_ddp_batch_entropy_is_the_global_batchs_over_real_gloo_ranks(tmp_path):
    """Two real processes (gloo), two sequences each: every rank's batch entropy is theirs on the concatenated batch
    (theirs 1.32.0 discards its all-reduce's result and divides the local average by the world size), the per-sample
    term stays the rank's own, and the DDP average of the ranks' input gradients is theirs on the whole batch."""
    import torch.multiprocessing as mp

    theirs, _ = pair(codebook_size=2**8, num_codebooks=2)  # dim 16, no projections
    x = seq(16, n=12, b=4, scale=0.1)
    out = mp.Manager().dict()
    mp.spawn(_ddp_worker, args=(str(tmp_path / "init"), x, out), nprocs=2, join=True)
    x_all = x.clone().requires_grad_()
    (_, _, aux_all), bd_all = theirs(x_all, return_loss_breakdown=True)
    aux_all.backward()
    for rank in range(2):
        breakdown, _ = out[rank]
        bd_rank = theirs(x[rank * 2 : rank * 2 + 2], return_loss_breakdown=True)[1]
        torch.testing.assert_close(breakdown[1], bd_all[1], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(breakdown[0], bd_rank[0], rtol=1e-5, atol=1e-6)
        assert abs(bd_all[1].item() - bd_rank[1].item()) > 0.1  # the global and local batch entropies differ here
    grad_ddp = torch.cat([out[r][1] for r in range(2)]) / 2  # DDP averages the ranks' gradients
    scale = x_all.grad.abs().max().item()
    assert scale > 0
    torch.testing.assert_close(grad_ddp, x_all.grad, rtol=0, atol=1e-4 * scale)  # float32 sums in other orders


PROJECTED = [
    dict(dim=8),
    dict(dim=12, codebook_size=2**5),
    dict(dim=12, codebook_size=2**6, num_codebooks=2, projection_has_bias=False),
    dict(dim=10, codebook_size=2**6, cosine_sim_project_in=True, orthogonal_rotation=True),
]


@pytest.mark.parametrize("kwargs", PROJECTED, ids=["plain", "projections", "no_bias", "cosine_rotation"])
def test_state_dict_round_trip_both_ways(kwargs):
    torch.manual_seed(0)
    theirs = vqp.LFQ(**kwargs)
    torch.manual_seed(0)
    ours = LFQ(**kwargs)
    sd_t, sd_o = theirs.state_dict(), ours.state_dict()
    assert list(sd_o) == list(sd_t)  # same keys, same order ("mask" included, persistent as theirs)
    assert all(torch.equal(sd_o[k], sd_t[k]) for k in sd_t)  # one seed, same weights
    torch.manual_seed(1)
    fresh_theirs, fresh_ours = vqp.LFQ(**kwargs), LFQ(**kwargs)
    with torch.no_grad():  # make the weights differ from the fresh modules' before loading
        for p in ours.parameters():
            p.add_(torch.randn_like(p))
    fresh_theirs.load_state_dict(ours.state_dict())  # ours -> theirs
    fresh_ours.load_state_dict(theirs.state_dict())  # theirs -> ours
    x = torch.randn(2, kwargs["dim"], 3, 3)
    assert torch.equal(fresh_ours(x).quantized, theirs(x).quantized)
    assert torch.equal(fresh_theirs(x).quantized, ours(x).quantized)
    if ours.has_projections:
        assert not torch.equal(ours(x).quantized, theirs(x).quantized)


def test_attributes_and_codebook():
    theirs, ours = pair(dim=14, codebook_size=2**6, num_codebooks=2, codebook_scale=0.25)
    for name in ("dim", "codebook_size", "codebook_dim", "num_codebooks", "keep_num_codebooks_dim", "has_projections"):
        assert getattr(ours, name) == getattr(theirs, name), name
    assert torch.equal(ours.codebook, theirs.codebook) and ours.dtype == theirs.dtype == torch.float32
    assert ours.codebook[1].tolist() == [-0.25] * 5 + [0.25]  # index 1: last channel is the low bit (big-endian)
    assert "codebook" not in ours.state_dict() and "zero" not in ours.state_dict()
    assert isinstance(ours, nn.Module) and magvit2.compat.LFQ is compat.LFQ


@pytest.mark.parametrize(
    "kwargs, option",
    [
        (dict(), "dim"),
        (dict(codebook_size=1000), "codebook_size"),
        (dict(dim=25), "codebook_size"),
        (dict(dim=8, num_codebooks=0), "num_codebooks"),
        (dict(dim=8, num_codebooks=2, keep_num_codebooks_dim=False), "keep_num_codebooks_dim"),
        (dict(dim=12, codebook_size=2**8, has_projections=False), "has_projections"),
        (dict(dim=8, frac_per_sample_entropy=0.0), "frac_per_sample_entropy"),
        (dict(dim=8, codebook_scale=0.0), "codebook_scale"),
        (dict(dim=8, soft_clamp_input_value=0.5), "soft_clamp_input_value"),
    ],
)
def test_invalid_options_raise_one_line(kwargs, option):
    with pytest.raises(ValueError, match=option) as err:
        LFQ(**kwargs)
    assert "\n" not in str(err.value) and str(err.value).startswith("magvit2.compat.LFQ: ")


@pytest.mark.parametrize(
    "call, words",
    [
        (lambda q: q(torch.randn(2, 4, 5)), "expected 6 input channels, got 5"),
        (lambda q: q(torch.randn(2, 3, 4, 6)), "channel-first"),
        (lambda q: q(torch.randn(2, 5, 6), inv_temperature=0.0), "inv_temperature"),
        (lambda q: q(torch.randn(2, 5, 6), mask=torch.ones(2, 4, dtype=torch.bool)), "mask"),
        (lambda q: q.indices_to_codes(torch.zeros(2, 3)), "integer"),
    ],
)
def test_bad_calls_raise_one_line(call, words):
    q = LFQ(dim=6, channel_first=False)
    with pytest.raises(ValueError, match=words) as err:
        call(q)
    assert "\n" not in str(err.value)


def test_inverse_temperature_reaches_the_entropy():
    ours = LFQ(dim=8)
    x = seq(8)
    hot = ours(x, inv_temperature=1.0, return_loss_breakdown=True)[1].per_sample_entropy
    cold = ours(x, inv_temperature=100.0, return_loss_breakdown=True)[1].per_sample_entropy
    assert hot.item() > cold.item() + 1.0 and math.isfinite(cold.item())
