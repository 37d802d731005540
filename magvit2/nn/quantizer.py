"""Lookup-free quantization (LFQ) as an nn.Module, served by the `magvit2.ops` kernels.

Official semantics (reference/open-magvit2.md §1): code = +1 where z > 0 else -1 (0 -> -1); index bit i <-> channel
i (LSB-first); straight-through gradient; entropy penalty over the full 2^K codebook at inverse temperature 100;
commitment = mean((z - code)^2). The official module keeps the loss weights in its training loss; here they are
constructor arguments (defaults = the official ImageNet configs: entropy 0.1, commitment 0.25) and `loss` is the
weighted total:

    loss = entropy_weight * (sample_minimization_weight * per_sample_entropy
                             - batch_maximization_weight * codebook_entropy)
           + commitment_weight * commitment
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from magvit2 import ops
from magvit2.nn.checks import check_values
from magvit2.ops.lfq import MAX_ENTROPY_BITS

Indices = torch.Tensor | tuple[torch.Tensor, ...]


class LFQOutput(NamedTuple):
    quantized: torch.Tensor  # input layout and dtype; values +-1, gradient of the identity (straight-through)
    indices: Indices  # input shape without the channel axis, int64; a tuple (one per group) when factorized
    loss: torch.Tensor  # weighted total, float32 scalar
    per_sample_entropy: torch.Tensor  # zeros in eval mode
    codebook_entropy: torch.Tensor  # zeros in eval mode
    commitment: torch.Tensor  # mean((z - code)^2), computed in train and eval mode


def _resolve_dims(dim: int | None, codebook_size: int | None) -> tuple[int, int]:
    if dim is None and codebook_size is None:
        dim = 18
    if codebook_size is None:
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f"LFQ: dim must be an int >= 1 (bits per token), got {dim!r}")
        codebook_size = 2**dim
    if not isinstance(codebook_size, int) or codebook_size < 2 or codebook_size & (codebook_size - 1):
        raise ValueError(f"LFQ: codebook_size must be a power of 2 >= 2, got {codebook_size!r}")
    bits = codebook_size.bit_length() - 1
    if bits > MAX_ENTROPY_BITS:
        raise ValueError(
            f"LFQ: codebook_size must be <= 2^{MAX_ENTROPY_BITS} (the exact entropy's limit), got 2^{bits}"
        )
    if dim is None:
        dim = bits
    if dim != bits:
        raise ValueError(
            f"LFQ: dim ({dim}) must equal log2(codebook_size) = {bits}: LFQ has no projection layers "
            "(as the official module); project the latents to log2(codebook_size) channels before it"
        )
    return dim, codebook_size


class LFQ(nn.Module):
    """Binary lookup-free quantizer with the exact full-codebook entropy penalty. No parameters, no state.

    Input (B, K, H, W) (any rank >= 4 is channel-first), or a sequence (B, N, K) (channel-last unless
    `channel_first=True`, then (B, K, N)). K = `dim` = log2(`codebook_size`).

    Example:
        >>> lfq = LFQ(dim=18, entropy_weight=0.1, commitment_weight=0.25)
        >>> out = lfq(torch.randn(2, 18, 16, 16, requires_grad=True))
        >>> out.indices.shape, out.quantized.shape
        (torch.Size([2, 16, 16]), torch.Size([2, 18, 16, 16]))
        >>> out.loss.backward()
    """

    def __init__(
        self,
        *,
        dim: int | None = None,
        codebook_size: int | None = None,
        entropy_weight: float = 0.1,
        commitment_weight: float = 0.25,
        inv_temperature: float = 100.0,
        sample_minimization_weight: float = 1.0,
        batch_maximization_weight: float = 1.0,
        log_eps: float = 1e-5,
        factorized_bits: Sequence[int] | None = None,
        global_entropy: bool = False,
        force_fp32: bool = True,
        channel_first: bool | None = None,
    ) -> None:
        super().__init__()
        self.dim, self.codebook_size = _resolve_dims(dim, codebook_size)
        if factorized_bits is not None:
            factorized_bits = [int(b) for b in factorized_bits]
            if sum(factorized_bits) != self.dim or min(factorized_bits) < 1:
                raise ValueError(f"LFQ: factorized_bits {factorized_bits} must be positive and sum to dim = {self.dim}")
        for name, value in (("inv_temperature", inv_temperature), ("log_eps", log_eps)):
            if not math.isfinite(value) or value < 0 or (name == "inv_temperature" and value == 0):
                raise ValueError(f"LFQ: {name} must be finite and {'> 0' if name == 'inv_temperature' else '>= 0'}")
        self.entropy_weight = float(entropy_weight)
        self.commitment_weight = float(commitment_weight)
        self.inv_temperature = float(inv_temperature)
        self.sample_minimization_weight = float(sample_minimization_weight)
        self.batch_maximization_weight = float(batch_maximization_weight)
        self.log_eps = float(log_eps)
        self.factorized_bits = factorized_bits
        self.global_entropy = bool(global_entropy)
        self.force_fp32 = bool(force_fp32)
        self.channel_first = channel_first

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, codebook_size={self.codebook_size}, entropy_weight={self.entropy_weight}, "
            f"commitment_weight={self.commitment_weight}, factorized_bits={self.factorized_bits}, "
            f"global_entropy={self.global_entropy}"
        )

    # --- layout -----------------------------------------------------------------------------------------------------

    def _is_channel_first(self, ndim: int) -> bool:
        if ndim < 3:
            raise ValueError(f"LFQ: expected (B, K, H, W) or (B, N, K) input, got a {ndim}-D tensor")
        if ndim >= 4:
            if self.channel_first is False:
                raise ValueError("LFQ: channel_first=False supports only 3-D (B, N, K) inputs")
            return True
        return bool(self.channel_first)

    def _to_tokens(self, z: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """Any supported layout -> (N, K) tokens (a view when the channel axis is innermost in memory)."""
        if not isinstance(z, torch.Tensor) or not z.is_floating_point():
            raise TypeError(f"LFQ: input must be a floating-point tensor, got {getattr(z, 'dtype', type(z))}")
        channel_first = self._is_channel_first(z.dim())
        k = z.shape[1] if channel_first else z.shape[-1]
        if k != self.dim:
            layout = "(B, K, ...)" if channel_first else "(B, N, K)"
            raise ValueError(f"LFQ: input {tuple(z.shape)} read as {layout} has K = {k} channels, expected {self.dim}")
        tokens = z.movedim(1, -1) if channel_first else z  # (B, ..., K)
        return tokens.reshape(-1, self.dim), channel_first

    def _from_tokens(self, t: torch.Tensor, shape: torch.Size, channel_first: bool) -> torch.Tensor:
        """(N, K) -> the input layout `shape`."""
        if channel_first:
            return t.view(shape[0], *shape[2:], self.dim).movedim(-1, 1)
        return t.view(shape)

    def _indices_shape(self, shape: torch.Size, channel_first: bool) -> tuple[int, ...]:
        return (shape[0], *shape[2:]) if channel_first else tuple(shape[:-1])

    # --- forward ----------------------------------------------------------------------------------------------------

    def quantize(self, z: torch.Tensor) -> tuple[torch.Tensor, Indices]:
        """Codes (straight-through, input layout and dtype) and indices; no losses."""
        quantized, indices, _, _ = self._quantize(z)
        return quantized, indices

    def _quantize(self, z: torch.Tensor):
        tokens, channel_first = self._to_tokens(z)  # (N, K)
        if self.force_fp32:
            tokens = tokens.float()
        codes, indices = ops.lfq_quantize(tokens, self.factorized_bits)  # (N, K) +-1, int64 (N,) per group
        ishape = self._indices_shape(z.shape, channel_first)
        if isinstance(indices, tuple):
            indices = tuple(i.view(ishape) for i in indices)
        else:
            indices = indices.view(ishape)
        code_map = self._from_tokens(codes.to(z.dtype), z.shape, channel_first)
        # codes + (z - z.detach()) is exactly +-1 in any dtype (z - z.detach() == 0), with the identity's gradient;
        # the official z + (codes - z).detach() rounds to values like 0.996 in bfloat16.
        quantized = code_map + (z - z.detach())
        return quantized, indices, tokens, codes

    def forward(self, z: torch.Tensor) -> LFQOutput:
        quantized, indices, tokens, codes = self._quantize(z)
        commitment = (tokens - codes).float().square().mean()  # codes carry no gradient (lfq_quantize)
        if self.training:
            group = self._entropy_group()
            per_sample, codebook = ops.lfq_entropy(tokens, self.inv_temperature, eps=self.log_eps, group=group)
            per_sample, codebook = per_sample.float(), codebook.float()
            entropy = self.sample_minimization_weight * per_sample - self.batch_maximization_weight * codebook
        else:
            per_sample = codebook = entropy = commitment.new_zeros(())
        loss = self.entropy_weight * entropy + self.commitment_weight * commitment
        return LFQOutput(quantized, indices, loss, per_sample, codebook, commitment)

    def _entropy_group(self):
        if not self.global_entropy:
            return None
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            return dist.group.WORLD
        return None  # one process: its batch is the global batch

    # --- indices -> codes -------------------------------------------------------------------------------------------

    def indices_to_codes(self, indices: Indices, *, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Exact inverse of the indices of `forward`: (B, H, W) -> (B, K, H, W), (B, N) -> (B, N, K) (or (B, K, N)
        with channel_first=True); a tuple of group indices when factorized. Values +-1 in `dtype`."""
        bits = self.factorized_bits or [self.dim]
        groups = indices if isinstance(indices, (tuple, list)) else (indices,)
        if len(groups) != len(bits):
            raise ValueError(f"LFQ.indices_to_codes: expected {len(bits)} index tensor(s) for groups {bits}")
        parts = []
        for idx, nbits in zip(groups, bits, strict=True):
            parts.append(_index_bits(idx, nbits, groups[0].shape))
        codes = torch.cat(parts, dim=-1).to(dtype) * 2 - 1  # (..., K)
        if codes.dim() >= 4 or (codes.dim() == 3 and self.channel_first):
            codes = codes.movedim(-1, 1)
        return codes


def _index_bits(idx: torch.Tensor, nbits: int, shape: torch.Size) -> torch.Tensor:
    if not isinstance(idx, torch.Tensor) or idx.is_floating_point() or idx.is_complex() or idx.dtype == torch.bool:
        raise TypeError(f"LFQ.indices_to_codes: indices must be an integer tensor, got {getattr(idx, 'dtype', idx)}")
    if idx.shape != shape:
        raise ValueError(f"LFQ.indices_to_codes: index groups differ in shape: {tuple(idx.shape)} vs {tuple(shape)}")
    if idx.dim() < 2:
        raise ValueError(f"LFQ.indices_to_codes: indices must be (B, N) or (B, H, W), got {tuple(idx.shape)}")
    if check_values(idx):  # on CPU, or with the debug switch (a host sync on a GPU)
        lo, hi = idx.min().item(), idx.max().item()
        if lo < 0 or hi >= 2**nbits:
            raise ValueError(f"LFQ.indices_to_codes: indices must lie in [0, {2**nbits}), got values in [{lo}, {hi}]")
    shifts = torch.arange(nbits, device=idx.device, dtype=torch.int64)
    return (idx.long().unsqueeze(-1) >> shifts) & 1  # (..., nbits), LSB-first
