"""A drop-in for vector-quantize-pytorch's `LFQ` (release 1.32.0), served by the `magvit2.ops` kernels.

Same constructor, `forward(x, inv_temperature=100., return_loss_breakdown=False, mask=None)`, outputs
(`Return(quantized, indices, entropy_aux_loss)`, `LossBreakdown(per_sample_entropy, batch_entropy, commitment)`),
`indices_to_codes`, attribute names and state_dict keys (`project_in`, `project_out`, `mask`, `orthogonal_rot`), and
the same parameter initialization order, so one seed gives both modules the same weights. Its conventions, unlike
`magvit2.LFQ`: index bits are big-endian (channel 0 is the most significant bit of a codebook's index), codes are
+-codebook_scale, the aux loss is entropy_loss_weight * (per-sample - diversity_gamma * batch entropy) +
commitment_loss_weight * commitment, and eval mode computes no loss (zeros).

The entropies are exact without the N x 2^K probability table: vector-quantize-pytorch's softmax over
-distance * inv_temperature, distance = -2 <x, c> with c in {-s, s}^d, is our op's softmax(2 t <x, b>) over
b in {-1, 1}^d with t = inv_temperature * s (t = inv_temperature * s / sqrt(d) when spherical). Its log clamp
(log max(p, 1e-5)) is reproduced, to float rounding: on the 2^d codebook average directly, and for the per-sample
term as our exact entropy minus sum_{p < 1e-5} p log(1e-5 / p), summed per token over two sorted half-codebooks
(O(N 2^(d/2) log)).

Two deliberate differences, both where 1.32.0 departs from what its code means to do:
- `mask`: the batch entropy is that of the masked tokens' average distribution (1.32.0 flattens the masked tokens
  with the codebook axis before its average, so its batch entropy equals the per-sample one);
- DDP: the average distribution is the mean of the ranks' averages, all-reduced with gradients (1.32.0 drops the
  result of its `torch.distributed.nn.all_reduce` and divides the local average by the world size).
Smaller ones: bad arguments raise one-line ValueErrors (1.32.0 asserts), inv_temperature must be > 0, `codebook` is
built when read (not a 2^K x K buffer), half-precision entropies are computed in float32 and then cast, and a mask
may also have the input's spatial shape (B, H, W) besides (B, H * W).
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from magvit2 import ops
from magvit2.ops.lfq import MAX_AVERAGE_BITS, all_reduce_sum

LOG_CLAMP = 1e-5  # vector-quantize-pytorch's log(t.clamp(min=1e-5)) in both entropies


class Return(NamedTuple):
    quantized: torch.Tensor
    indices: torch.Tensor
    entropy_aux_loss: torch.Tensor


class LossBreakdown(NamedTuple):
    per_sample_entropy: torch.Tensor
    batch_entropy: torch.Tensor
    commitment: torch.Tensor


class CosineSimLinear(nn.Module):
    """x -> scale * normalize(x) @ normalize(weight, columns); weight (dim_in, dim_out) drawn from randn."""

    def __init__(self, dim_in: int, dim_out: int, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = scale
        self.weight = nn.Parameter(torch.randn(dim_in, dim_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1) @ F.normalize(self.weight, dim=0) * self.scale


def _fail(message: str) -> None:
    raise ValueError(f"magvit2.compat.LFQ: {message}")


class LFQ(nn.Module):
    """vector_quantize_pytorch.LFQ on the magvit2 kernels: `from magvit2.compat import LFQ` in place of
    `from vector_quantize_pytorch import LFQ`.

    Example (vector-quantize-pytorch's README):
        >>> quantizer = LFQ(codebook_size=65536, dim=16, entropy_loss_weight=0.1, diversity_gamma=1.0)
        >>> image_feats = torch.randn(1, 16, 32, 32)
        >>> quantized, indices, entropy_aux_loss = quantizer(image_feats, inv_temperature=100.0)
        >>> (quantized == quantizer.indices_to_codes(indices)).all()
        tensor(True)
    """

    def __init__(
        self,
        *,
        dim: int | None = None,
        codebook_size: int | None = None,
        entropy_loss_weight: float = 0.1,
        commitment_loss_weight: float = 0.0,
        diversity_gamma: float = 1.0,
        straight_through_activation: nn.Module | None = None,
        num_codebooks: int = 1,
        keep_num_codebooks_dim: bool | None = None,
        codebook_scale: float = 1.0,
        frac_per_sample_entropy: float = 1.0,
        has_projections: bool | None = None,
        projection_has_bias: bool = True,
        soft_clamp_input_value: float | None = None,
        cosine_sim_project_in: bool = False,
        cosine_sim_project_in_scale: float | None = None,
        channel_first: bool | None = None,
        experimental_softplus_entropy_loss: bool = False,
        entropy_loss_offset: float = 5.0,
        spherical: bool = False,
        force_quantization_f32: bool = True,
        orthogonal_rotation: bool = False,
    ) -> None:
        super().__init__()
        if dim is None and codebook_size is None:
            _fail("either dim or codebook_size must be given")
        if codebook_size is None:
            codebook_size = 2**dim
        if not isinstance(codebook_size, int) or codebook_size < 2 or codebook_size & (codebook_size - 1):
            _fail(f"codebook_size must be a power of 2 >= 2, got {codebook_size!r}")
        codebook_dim = codebook_size.bit_length() - 1
        if codebook_dim > MAX_AVERAGE_BITS:  # this module's losses take the whole 2^K average
            _fail(f"codebook_size 2^{codebook_dim} is not supported: codebook_size <= 2^{MAX_AVERAGE_BITS} is")
        if not isinstance(num_codebooks, int) or num_codebooks < 1:
            _fail(f"num_codebooks must be an int >= 1, got {num_codebooks!r}")
        codebook_dims = codebook_dim * num_codebooks
        dim = codebook_dims if dim is None else dim
        has_projections = dim != codebook_dims if has_projections is None else bool(has_projections)
        if not has_projections and dim != codebook_dims:
            _fail(f"has_projections=False needs dim ({dim}) = log2(codebook_size) * num_codebooks ({codebook_dims})")
        keep_num_codebooks_dim = num_codebooks > 1 if keep_num_codebooks_dim is None else keep_num_codebooks_dim
        if num_codebooks > 1 and not keep_num_codebooks_dim:
            _fail("keep_num_codebooks_dim=False needs num_codebooks=1")
        if not 0 < frac_per_sample_entropy <= 1:
            _fail(f"frac_per_sample_entropy must lie in (0, 1], got {frac_per_sample_entropy!r}")
        if not codebook_scale > 0:
            _fail(f"codebook_scale must be > 0, got {codebook_scale!r}")
        if soft_clamp_input_value is not None and soft_clamp_input_value < codebook_scale:
            _fail(f"soft_clamp_input_value ({soft_clamp_input_value}) must be >= codebook_scale ({codebook_scale})")

        self.codebook_size = codebook_size
        # modules and buffers in vector-quantize-pytorch's order: the same seed draws the same weights
        if not has_projections:
            self.project_in = nn.Identity()
        elif cosine_sim_project_in:
            scale = codebook_scale if cosine_sim_project_in_scale is None else cosine_sim_project_in_scale
            self.project_in = CosineSimLinear(dim, codebook_dims, scale=scale)
        else:
            self.project_in = nn.Linear(dim, codebook_dims, bias=projection_has_bias)
        if has_projections:
            self.project_out = nn.Linear(codebook_dims, dim, bias=projection_has_bias)
        else:
            self.project_out = nn.Identity()
        self.has_projections = has_projections
        self.dim = dim
        self.codebook_dim = codebook_dim
        self.num_codebooks = num_codebooks
        self.keep_num_codebooks_dim = keep_num_codebooks_dim
        self.channel_first = channel_first
        self.activation = nn.Identity() if straight_through_activation is None else straight_through_activation
        self.spherical = spherical
        self.orthogonal_rotation = orthogonal_rotation
        if orthogonal_rotation:
            self.register_buffer("orthogonal_rot", nn.init.orthogonal_(torch.empty(codebook_dim, codebook_dim)))
        self.frac_per_sample_entropy = frac_per_sample_entropy
        self.diversity_gamma = diversity_gamma
        self.entropy_loss_weight = entropy_loss_weight
        self.codebook_scale = codebook_scale
        self.commitment_loss_weight = commitment_loss_weight
        self.soft_clamp_input_value = soft_clamp_input_value
        self.entropy_loss_offset = entropy_loss_offset
        self.experimental_softplus_entropy_loss = experimental_softplus_entropy_loss
        self.force_quantization_f32 = force_quantization_f32
        # bit weights of one codebook's index, channel 0 first (big-endian); persistent, as in vector-quantize-pytorch
        self.register_buffer("mask", 2 ** torch.arange(codebook_dim - 1, -1, -1))
        self.register_buffer("zero", torch.tensor(0.0), persistent=False)  # eval-mode losses; carries device, dtype

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, codebook_size={self.codebook_size}, num_codebooks={self.num_codebooks}, "
            f"entropy_loss_weight={self.entropy_loss_weight}, commitment_loss_weight={self.commitment_loss_weight}, "
            f"diversity_gamma={self.diversity_gamma}, codebook_scale={self.codebook_scale}"
        )

    # --- codes ------------------------------------------------------------------------------------------------------

    @property
    def dtype(self) -> torch.dtype:
        return self.zero.dtype

    @property
    def codebook(self) -> torch.Tensor:
        """(codebook_size, codebook_dim) codes +-codebook_scale of every index, built on each read (vector-quantize-
        pytorch keeps it as a non-persistent buffer)."""
        indices = torch.arange(self.codebook_size, device=self.mask.device)
        return self.bits_to_codes(((indices[:, None] & self.mask) != 0).to(self.dtype))

    def bits_to_codes(self, bits: torch.Tensor) -> torch.Tensor:
        return bits * self.codebook_scale * 2 - self.codebook_scale

    def maybe_l2norm(self, t: torch.Tensor) -> torch.Tensor:
        return F.normalize(t, dim=-1) * self.codebook_scale if self.spherical else t

    def indices_to_codes(self, indices: torch.Tensor, project_out: bool = True) -> torch.Tensor:
        """Indices of `forward` -> its quantized output (eval mode): (B, H, W) -> (B, dim, H, W), (B, N) -> (B, N, dim),
        with a trailing codebook axis in the indices when keep_num_codebooks_dim."""
        if not isinstance(indices, torch.Tensor) or indices.is_floating_point() or indices.dtype == torch.bool:
            _fail(f"indices_to_codes: indices must be an integer tensor, got {getattr(indices, 'dtype', indices)}")
        image_like = indices.dim() >= 3 + int(self.keep_num_codebooks_dim)
        transpose = image_like if self.channel_first is None else self.channel_first
        if not self.keep_num_codebooks_dim:
            indices = indices.unsqueeze(-1)
        bits = ((indices.unsqueeze(-1).long() & self.mask) != 0).to(self.dtype)  # (..., c, d)
        codes = self.maybe_l2norm(self.bits_to_codes(bits))
        if self.orthogonal_rotation:
            codes = codes @ self.orthogonal_rot.t()
        codes = codes.flatten(-2)
        if project_out:
            codes = self.project_out(codes)
        return codes.movedim(-1, 1) if transpose else codes

    # --- forward ----------------------------------------------------------------------------------------------------

    def forward(
        self,
        x: torch.Tensor,
        inv_temperature: float = 100.0,
        return_loss_breakdown: bool = False,
        mask: torch.Tensor | None = None,
    ):
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            _fail(f"input must be a floating-point tensor, got {getattr(x, 'dtype', type(x))}")
        transpose = x.dim() >= 4 if self.channel_first is None else self.channel_first
        if x.dim() < 3 or (x.dim() > 3 and not transpose):
            _fail(f"input must be (B, dim, ...) channel-first or (B, N, dim), got shape {tuple(x.shape)}")
        spatial = None
        if transpose:
            x = x.movedim(1, -1)
            spatial = x.shape[1:-1]
            x = x.reshape(x.shape[0], -1, x.shape[-1])
        if x.shape[-1] != self.dim:
            _fail(f"expected {self.dim} input channels, got {x.shape[-1]} (input read as {tuple(x.shape)})")
        b, n = x.shape[:2]
        if mask is not None:
            if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.numel() != b * n:
                _fail(f"mask must be a bool tensor of {b} x {n} tokens, got {getattr(mask, 'shape', mask)}")
            mask = mask.reshape(b, n)

        x = self.project_in(x)
        if self.soft_clamp_input_value is not None:
            x = (x / self.soft_clamp_input_value).tanh() * self.soft_clamp_input_value
        x = x.unflatten(-1, (self.num_codebooks, self.codebook_dim))  # (b, n, c, d)
        if self.orthogonal_rotation:
            x = x @ self.orthogonal_rot
        x = self.maybe_l2norm(x)

        force_f32 = self.force_quantization_f32
        with torch.autocast("cuda", enabled=False) if force_f32 else nullcontext():
            orig_dtype = x.dtype
            if force_f32:
                x = x.float()
            original_input = x
            quantized, indices = self._quantize(x)
            quantized = self.maybe_l2norm(quantized)
            if self.training:
                x = self.activation(x)
                x = x + (quantized - x).detach()
            else:
                x = quantized

            if self.training:
                per_sample, batch = self._entropies(original_input, mask, inv_temperature)
                entropy_aux_loss = per_sample - self.diversity_gamma * batch
                if self.experimental_softplus_entropy_loss:
                    entropy_aux_loss = F.softplus(entropy_aux_loss + self.entropy_loss_offset)
            else:
                entropy_aux_loss = per_sample = batch = self.zero
            if self.training and self.commitment_loss_weight > 0:
                commit_loss = F.mse_loss(original_input, quantized.detach(), reduction="none")
                commit_loss = (commit_loss if mask is None else commit_loss[mask]).mean()
            else:
                commit_loss = self.zero
            if force_f32:
                x = x.type(orig_dtype)

        if self.orthogonal_rotation:
            x = x @ self.orthogonal_rot.t()
        x = self.project_out(x.flatten(-2))
        if transpose:
            x = x.unflatten(1, spatial).movedim(-1, 1)
            indices = indices.unflatten(1, spatial)
        if not self.keep_num_codebooks_dim:
            indices = indices.squeeze(-1)

        aux_loss = entropy_aux_loss * self.entropy_loss_weight + commit_loss * self.commitment_loss_weight
        ret = Return(x, indices, aux_loss)
        if not return_loss_breakdown:
            return ret
        return ret, LossBreakdown(per_sample, batch, commit_loss)

    def _quantize(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(b, n, c, d) -> codes +-codebook_scale (b, n, c, d), big-endian indices (b, n, c) int64."""
        b, n, c, d = x.shape
        # our op reads bit i of an index from channel i: reversed channels make channel 0 the top bit
        tokens = x.detach().flip(-1).reshape(b * n, c * d)
        codes, indices = ops.lfq_quantize(tokens, [d] * c if c > 1 else None)
        indices = torch.stack(indices, -1) if c > 1 else indices.unsqueeze(-1)
        quantized = codes.view(b, n, c, d).flip(-1) * self.codebook_scale
        return quantized, indices.view(b, n, c)

    def _entropies(
        self, z: torch.Tensor, mask: torch.Tensor | None, inv_temperature: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample and batch entropy of (b, n, c, d) latents, each averaged over the c codebooks."""
        inv_temperature = float(inv_temperature)
        if not math.isfinite(inv_temperature) or inv_temperature <= 0:
            _fail(f"inv_temperature must be a finite number > 0, got {inv_temperature!r}")
        tokens = z.flatten(0, 1) if mask is None else z[mask]  # (N, c, d)
        if self.frac_per_sample_entropy < 1:
            count = tokens.shape[0]
            keep = torch.randn(count).argsort(dim=-1) < int(count * self.frac_per_sample_entropy)
            tokens = tokens[keep.to(tokens.device)]
        # p(code) = softmax(2 * inv_temperature * <z, code>) over codes +-s (+-s / sqrt(d) when spherical)
        scale = self.codebook_scale / math.sqrt(self.codebook_dim) if self.spherical else self.codebook_scale
        t = inv_temperature * scale
        per_sample, averages = [], []
        for g in range(self.num_codebooks):
            group = tokens[:, g].contiguous()
            # one pass gives the exact per-sample entropy and the (2^ceil(d/2), 2^floor(d/2)) codebook average
            exact, _, avg = torch.ops.magvit2.lfq_entropy.default(group, t, 0.0)
            per_sample.append(exact - _clamped_log_excess(group, t, LOG_CLAMP))
            averages.append(avg)
        avg = torch.stack(averages)  # (c, 2^ka, 2^kb)
        avg = _distributed_mean(avg)
        batch = -(avg * avg.clamp(min=LOG_CLAMP).log()).sum((1, 2)).mean()
        out_dtype = z.dtype  # vector-quantize-pytorch's entropies carry the latents' dtype
        return torch.stack(per_sample).mean().to(out_dtype), batch.to(out_dtype)


def _clamped_log_excess(z: torch.Tensor, inv_temperature: float, eps: float) -> torch.Tensor:
    """Mean over tokens of sum_{codes: p < eps} p log(eps / p), for p(code) = softmax(2 t <z, code>) over {-1, 1}^K.

    The exact entropy minus this is -sum p log(max(p, eps)). p factors into the probabilities of the low and high
    bit halves, p = pa * pb; with one token's log pb sorted, the codes below eps for a given pa are a prefix, so
    prefix sums of pb and pb log pb give every pa's share. Differentiable (the prefix boundaries carry no gradient).
    """
    n, k = z.shape
    dtype = torch.float64 if z.dtype == torch.float64 else torch.float32
    x = 4.0 * inv_temperature * z.to(dtype)  # bit logits: p(bit i = 1) = sigmoid(x_i)
    log1, log0 = F.logsigmoid(x), F.logsigmoid(-x)
    ka = (k + 1) // 2
    log_pa = _half_log_probs(log1[:, :ka], log0[:, :ka])  # (N, 2^ka)
    log_pb, _ = _half_log_probs(log1[:, ka:], log0[:, ka:]).sort(dim=1)  # (N, 2^kb) ascending
    pb = log_pb.exp()
    zero = pb.new_zeros(n, 1)
    sum_p = torch.cat([zero, pb.cumsum(1)], 1)  # column j: sum of the j smallest pb
    sum_plogp = torch.cat([zero, (pb * log_pb).cumsum(1)], 1)
    log_eps = math.log(eps)
    below = torch.searchsorted(log_pb.detach(), (log_eps - log_pa).detach())  # count of pb with pa * pb < eps
    excess = log_pa.exp() * ((log_eps - log_pa) * sum_p.gather(1, below) - sum_plogp.gather(1, below))
    return excess.sum(1).mean() if n else excess.sum()


def _half_log_probs(log1: torch.Tensor, log0: torch.Tensor) -> torch.Tensor:
    """(N, k) log-probabilities of each bit being 1 and 0 -> (N, 2^k) log-probabilities of every bit pattern."""
    k = log1.shape[1]
    patterns = (torch.arange(2**k, device=log1.device)[:, None] >> torch.arange(k, device=log1.device)) & 1
    patterns = patterns.to(log1.dtype)  # (2^k, k)
    return log1 @ patterns.t() + log0 @ (1 - patterns).t()


def _distributed_mean(avg: torch.Tensor) -> torch.Tensor:
    """Mean of the ranks' averages when a process group of 2+ ranks is up (gradients flow back to every rank)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return avg
    return all_reduce_sum(avg) / dist.get_world_size()
