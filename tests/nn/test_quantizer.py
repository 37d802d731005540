"""LFQ module: codes/indices as the official quantizer, losses equal to magvit2.ops and to the official naive
formula (values and gradients), layouts, factorized indices, exact inversion, and clear errors."""

import pytest
import torch
import torch.nn.functional as F

import magvit2
from magvit2 import LFQ, ops
from magvit2.ops.reference import lfq_entropy_naive


def tokens_of(z):  # (B, K, H, W) -> (B*H*W, K) in the official b-major, raster order
    return z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])


def test_codes_and_indices_by_hand():
    lfq = LFQ(dim=4)
    z = torch.tensor([[[0.5, -0.2, 0.0, 1e-3]]])  # (B=1, N=1, K=4)
    out = lfq(z)
    assert out.quantized.tolist() == [[[1.0, -1.0, -1.0, 1.0]]]  # 0 -> -1
    assert out.indices.tolist() == [[1 + 8]]  # bit i <-> channel i (LSB-first)


def test_no_parameters_or_state():
    lfq = LFQ()
    assert lfq.dim == 18 and lfq.codebook_size == 2**18
    assert list(lfq.parameters()) == [] and list(lfq.buffers()) == [] and lfq.state_dict() == {}
    assert LFQ(dim=10).codebook_size == 1024 and LFQ(codebook_size=2**12).dim == 12
    assert magvit2.nn.LFQ is LFQ


def test_image_layout_matches_ops():
    torch.manual_seed(0)
    z = torch.randn(2, 18, 5, 7)
    out = LFQ().eval()(z)
    codes, indices = ops.lfq_quantize(tokens_of(z))
    assert out.indices.shape == (2, 5, 7) and out.indices.dtype == torch.int64
    assert torch.equal(out.indices.flatten(), indices)
    assert torch.equal(tokens_of(out.quantized), codes)


def test_losses_equal_ops_and_official_composition():
    torch.manual_seed(1)
    z = torch.randn(2, 12, 4, 4) * 0.05
    weights = dict(entropy_weight=0.3, commitment_weight=0.7, sample_minimization_weight=2.0,
                   batch_maximization_weight=0.5)  # fmt: skip
    lfq = LFQ(dim=12, **weights).train()
    out = lfq(z)
    per_sample, codebook = ops.lfq_entropy(tokens_of(z), 100.0, eps=1e-5)
    assert torch.equal(out.per_sample_entropy, per_sample) and torch.equal(out.codebook_entropy, codebook)
    commitment = F.mse_loss(z, torch.where(z > 0, 1.0, -1.0))
    torch.testing.assert_close(out.commitment, commitment)
    total = 0.3 * (2.0 * per_sample - 0.5 * codebook) + 0.7 * commitment
    torch.testing.assert_close(out.loss, total)


def test_loss_and_gradient_equal_official_naive_formula():
    """Official: softmax over the full 2^K codebook at T = 0.01, log(avg + 1e-5); commitment MSE; weights 0.1/0.25."""
    torch.manual_seed(2)
    z = (torch.randn(3, 10, 4, 3, dtype=torch.float64) * 0.02).requires_grad_(True)
    out = LFQ(dim=10, force_fp32=False).train()(z)
    out.loss.backward()
    ours = z.grad.clone()
    z.grad = None
    per_sample, codebook = lfq_entropy_naive(tokens_of(z), 100.0, eps=1e-5)
    commitment = F.mse_loss(z, torch.where(z > 0, 1.0, -1.0).to(z.dtype))
    official = 0.1 * (per_sample - codebook) + 0.25 * commitment
    official.backward()
    torch.testing.assert_close(out.loss.double(), official, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours, z.grad, rtol=1e-4, atol=1e-8)


def test_straight_through_gradient_and_exact_codes_in_bf16():
    z = torch.randn(2, 18, 3, 3, dtype=torch.bfloat16, requires_grad=True)
    out = LFQ().eval()(z)
    assert out.quantized.dtype == torch.bfloat16
    assert torch.equal(out.quantized.abs(), torch.ones_like(out.quantized))  # exactly +-1, no rounding
    out.quantized.float().mul(torch.arange(18.0).view(1, 18, 1, 1)).sum().backward()
    assert torch.equal(z.grad.float(), torch.arange(18.0).view(1, 18, 1, 1).expand(2, 18, 3, 3))


def test_eval_mode_skips_entropy():
    z = torch.randn(2, 18, 4, 4)
    out = LFQ(commitment_weight=0.5).eval()(z)
    assert out.per_sample_entropy.item() == 0 and out.codebook_entropy.item() == 0
    torch.testing.assert_close(out.loss, 0.5 * out.commitment)
    assert out.commitment.item() > 0


def test_sequence_layouts():
    torch.manual_seed(3)
    z = torch.randn(2, 9, 18)  # (B, N, K)
    out = LFQ().eval()(z)
    assert out.indices.shape == (2, 9) and out.quantized.shape == (2, 9, 18)
    assert torch.equal(out.indices.flatten(), ops.lfq_quantize(z.reshape(-1, 18)).indices)
    cf = LFQ(channel_first=True).eval()(z.transpose(1, 2))  # (B, K, N)
    assert torch.equal(cf.indices, out.indices) and torch.equal(cf.quantized, out.quantized.transpose(1, 2))


@pytest.mark.parametrize("channel_first", [None, True])
@pytest.mark.parametrize("shape", [(2, 18, 3, 5), (2, 7, 18), (1, 18, 2, 2, 3)], ids=["BKHW", "BNK", "BKTHW"])
def test_indices_to_codes_inverts(shape, channel_first):
    if channel_first and len(shape) == 3:
        shape = (shape[0], shape[2], shape[1])
    lfq = LFQ(channel_first=channel_first).eval()
    out = lfq(torch.randn(shape))
    assert torch.equal(lfq.indices_to_codes(out.indices), out.quantized)


def test_factorized_indices():
    torch.manual_seed(4)
    z = torch.randn(2, 18, 4, 4)
    full = LFQ().eval()(z)
    lfq = LFQ(factorized_bits=[6, 12]).eval()
    out = lfq(z)
    pre, post = out.indices
    assert pre.shape == post.shape == (2, 4, 4) and int(pre.max()) < 64 and int(post.max()) < 4096
    assert torch.equal(pre + 64 * post, full.indices)
    assert torch.equal(lfq.indices_to_codes((pre, post)), out.quantized)


def test_global_entropy_without_process_group_is_local():
    z = torch.randn(2, 18, 4, 4)
    local, glob = LFQ().train()(z), LFQ(global_entropy=True).train()(z)
    assert torch.equal(local.codebook_entropy, glob.codebook_entropy)


def test_compiles_fullgraph():
    lfq = LFQ(dim=8).train()
    z = torch.randn(2, 8, 4, 4)
    compiled = torch.compile(lfq, fullgraph=True, backend="aot_eager")
    got, want = compiled(z), lfq(z)
    assert torch.equal(got.indices, want.indices)
    torch.testing.assert_close(got.loss, want.loss)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: LFQ()(torch.randn(2, 16, 4, 4)), "K = 16 channels, expected 18"),
        (lambda: LFQ()(torch.randn(2, 5, 16)), "K = 16 channels, expected 18"),
        (lambda: LFQ()(torch.randn(4, 18)), "got a 2-D tensor"),
        (lambda: LFQ(dim=10, codebook_size=2**12), "must equal log2"),
        (lambda: LFQ(codebook_size=1000), "power of 2"),
        (lambda: LFQ(factorized_bits=[6, 6]), "sum to dim"),
        (lambda: LFQ().indices_to_codes(torch.tensor([[0, 2**18]])), r"\[0, 262144\)"),
        (lambda: LFQ().indices_to_codes(torch.tensor([[-1, 3]])), r"\[-1, 3\]"),
        (lambda: LFQ(factorized_bits=[6, 12]).indices_to_codes(torch.tensor([[64]])), "2 index tensor"),
        (lambda: LFQ(factorized_bits=[6, 12]).indices_to_codes((torch.tensor([[64]]), torch.tensor([[0]]))), "64"),
    ],
    ids=[
        "bad-K-image",
        "bad-K-seq",
        "2d",
        "dim-mismatch",
        "not-pow2",
        "bits-sum",
        "idx-high",
        "idx-neg",
        "groups",
        "pre-range",
    ],  # fmt: skip
)
def test_bad_input_raises_value_error(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_non_float_inputs_raise_type_error():
    with pytest.raises(TypeError, match="floating-point"):
        LFQ()(torch.zeros(1, 18, 2, 2, dtype=torch.int64))
    with pytest.raises(TypeError, match="integer tensor"):
        LFQ().indices_to_codes(torch.zeros(1, 2, 2))
