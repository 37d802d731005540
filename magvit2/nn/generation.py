"""Token-by-token generation for `ARTransformer`: a static-shape decode step and the sampling loop around it.

A step feeds one new position for R rows (B conditional rows, then B null-class rows under classifier-free guidance)
through the spatial blocks, writing k, v into preallocated caches, then runs the two intra sub-steps: sub-step 0
gives the pre logits, sub-step 1 (fed pre_emb(sampled pre)) the post logits. Sampling stays outside the step because
`ops.sample_tokens` takes its stream offset as a Python int, which a compiled graph would specialise on.

The step works on the model's own weights in the layouts a 16-row decode wants (one generation: 2 x 8 rows, dim
256, 4 + 1 layers, on the 2-core CPU this was tuned on, where about half of a step is matmul time): the RMSNorm
weights folded into the next projection and w1/w3 into one matrix (26 matmuls a token instead of 32), residual adds
inside `addmm`, RoPE as one complex multiply (58 us vs 109 us for the pair swap with flip), the one-key intra
sub-step 0 without q or softmax, and guided logits formed before the linear head. Eager steps attend over the
written prefix of the cache; a static step (for `torch.compile(fullgraph=True)`) attends over the whole cache with
a mask built from the position tensor, so one graph serves every position.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


class KVCache(NamedTuple):
    k: torch.Tensor  # (R, H, S, D), preallocated; one per layer (a compiled step writes a whole input in place,
    v: torch.Tensor  # where a slice of one (L, ...) tensor would be copied back whole at every call)


class Generated(NamedTuple):
    pre: torch.Tensor  # (B, T) int64, bits 0..k0-1 of each token
    post: torch.Tensor  # (B, T) int64, the remaining bits
    logits_pre: torch.Tensor | None = None  # (B, T, 2^k0) conditional logits before guidance (return_logits=True)
    logits_post: torch.Tensor | None = None  # (B, T, 2^k1)

    def indices(self, pre_bits: int = 6) -> torch.Tensor:
        """Full token ids pre + post << pre_bits (the tokenizer's unfactorized index), (B, T)."""
        return self.pre + (self.post << pre_bits)


class _Weights(NamedTuple):
    """One block's weights as the decode step uses them: the RMSNorm weights folded into the next projection."""

    wqkv: torch.Tensor  # (3 dim, dim) * attention_norm
    wo_t: torch.Tensor  # (dim, dim) transposed view, for addmm
    w13: torch.Tensor  # (2 hidden, dim): [w1; w3] * ffn_norm
    w2_t: torch.Tensor  # (hidden, dim) transposed view


def _weights(block: nn.Module) -> _Weights:  # a transformer Block
    ff, g1, g2 = block.feed_forward, block.attention_norm.weight, block.ffn_norm.weight
    return _Weights(
        (block.attention.wqkv.weight * g1).detach(),
        block.attention.wo.weight.detach().t(),
        (torch.cat([ff.w1.weight, ff.w3.weight]) * g2).detach(),
        ff.w2.weight.detach().t(),
    )


class DecodeStep(nn.Module):
    """Decode state for `rows` sequences of up to `length` tokens: spatial KV caches, the intra 2-slot cache, RoPE,
    and the model's weights in decode layouts (built per generation on the model's device and dtype; not trainable).

    `pre_logits(x, pos)`: x (R, dim) embedding of position `pos` (0-d int64 tensor; position 0 is the class) ->
    pre logits. `post_logits(pre)`: pre (R,) sampled pre ids of that position -> post logits. Logits are (R, V)
    per row; with `guidance=(s0, s1)` the R = 2B rows are [cond; null class] and the logits are the guided
    (B, V) uncond + s * (cond - uncond) (cond alone where s <= 1), combined before the head, which is linear: half
    the rows through the largest matmul of the step (the 4096-way post head).
    With `static=True` every call has the same shapes and no Python value depends on `pos`, so
    `torch.compile(step.pre_logits, fullgraph=True)` gives one graph for all positions; otherwise pass `n=int(pos)`
    and attention reads only the written prefix.

    Example:
        >>> model = ARTransformer.from_preset("tiny").eval()
        >>> step = DecodeStep(model, rows=2, length=64)
        >>> x = model.class_emb.embedding_table(torch.tensor([3, 7]))
        >>> step.pre_logits(x, torch.tensor(0), n=0).shape, step.post_logits(torch.tensor([5, 9])).shape
        (torch.Size([2, 64]), torch.Size([2, 4096]))
    """

    def __init__(
        self,
        model: nn.Module,  # an ARTransformer (not imported: the model imports this module)
        *,
        rows: int,
        length: int,
        guidance: tuple[float, float] | None = None,
        static: bool = False,
    ) -> None:
        super().__init__()
        c = model.config
        param = model.pre_emb.weight
        device, dtype = param.device, param.dtype
        if guidance is not None and rows % 2:
            raise ValueError(f"DecodeStep: guidance needs [cond; null] rows, an even count; got rows={rows}")
        self.guidance, self.static = guidance, static
        self.dim, self.n_head, self.head_dim, self.eps = c.dim, c.n_head, c.head_dim, c.norm_eps
        self.spatial = [_weights(b) for b in model.spatial_blocks]
        self.intra = [_weights(b) for b in model.factorized_blocks]
        self.heads = [(h.weight * model.norm.weight).detach() for h in model.head]
        self.pre_emb = model.pre_emb.weight.detach()
        shape = (rows, c.n_head, length, c.head_dim)
        two = (rows, c.n_head, 2, c.head_dim)
        self.cache = [KVCache(*(torch.zeros(shape, device=device, dtype=dtype) for _ in "kv")) for _ in self.spatial]
        self.intra_cache = [KVCache(*(torch.zeros(two, device=device, dtype=dtype) for _ in "kv")) for _ in self.intra]
        # RoPE rows (fp32, as apply_rope computes): cos/sin (S, D/2) for the static path's real arithmetic, and
        # cos + i sin for the eager path's one complex multiply
        table = model.rope[: max(length, 2)].to(device)  # rows 0 and 1 also serve the intra positions
        self.cos, self.sin = table[..., 0].contiguous(), table[..., 1].contiguous()
        self.rot = torch.complex(self.cos, self.sin)
        self.positions = torch.arange(length, device=device)

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        # RMSNorm.forward's arithmetic (in fp32) without the weight, which is folded into the next matmul
        xf = x.float()
        return (xf * torch.rsqrt(xf.square().mean(-1, keepdim=True) + self.eps)).type_as(x)

    def _rope(self, x: torch.Tensor, at: int | torch.Tensor) -> torch.Tensor:
        """x (..., D) rotated by RoPE row `at` (an int, or a (1,) index tensor on the static path), in fp32."""
        pairs = x.float().unflatten(-1, (-1, 2))  # (..., D/2, 2)
        if not self.static:
            return torch.view_as_real(torch.view_as_complex(pairs) * self.rot[at]).flatten(-2).type_as(x)
        if isinstance(at, int):
            cos, sin = self.cos[at], self.sin[at]
        else:
            cos, sin = self.cos.index_select(0, at)[0], self.sin.index_select(0, at)[0]
        a, b = pairs[..., 0], pairs[..., 1]
        return torch.stack([a * cos - b * sin, b * cos + a * sin], dim=-1).flatten(-2).type_as(x)

    def _block(self, x: torch.Tensor, w: _Weights, attend: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        r = x.shape[0]
        qkv = F.linear(self._norm(x), w.wqkv).view(r, 3, self.n_head, self.head_dim)
        h = torch.addmm(x, attend(qkv).reshape(r, self.dim), w.wo_t)  # attend: (R, H, 1, D)
        a, b = F.linear(self._norm(h), w.w13).chunk(2, dim=-1)
        return torch.addmm(h, F.silu(a) * b, w.w2_t)

    def _spatial(self, layer: int, pos: torch.Tensor, n: int | None) -> Callable[[torch.Tensor], torch.Tensor]:
        k_cache, v_cache = self.cache[layer]  # (R, H, S, D)

        def attend(qkv: torch.Tensor) -> torch.Tensor:
            qk = self._rope(qkv[:, :2], pos.view(1) if n is None else n)  # (R, 2, H, D)
            q, k, v = qk[:, 0, :, None], qk[:, 1, :, None], qkv[:, 2, :, None]  # (R, H, 1, D)
            if n is None:
                k_cache[:, :, pos.view(1)] = k  # index_put_: compiled as an in-place write of one position
                v_cache[:, :, pos.view(1)] = v
                mask = (self.positions <= pos).view(1, 1, 1, -1)  # positions written so far
                return F.scaled_dot_product_attention(q, k_cache, v_cache, attn_mask=mask)
            k_cache[:, :, n : n + 1] = k
            v_cache[:, :, n : n + 1] = v
            return F.scaled_dot_product_attention(q, k_cache[:, :, : n + 1], v_cache[:, :, : n + 1])

        return attend

    def _intra(self, layer: int, slot: int) -> Callable[[torch.Tensor], torch.Tensor]:
        k_cache, v_cache = self.intra_cache[layer]  # (R, H, 2, D)

        def attend(qkv: torch.Tensor) -> torch.Tensor:
            v_cache[:, :, slot] = qkv[:, 2]
            if slot == 0:  # one key: its softmax weight is exactly 1 and q is not needed
                k_cache[:, :, 0] = self._rope(qkv[:, 1], 0)  # RoPE row 0 (zero)
                return qkv[:, 2, :, None]
            qk = self._rope(qkv[:, :2], 1)  # RoPE row 1 (identity)
            k_cache[:, :, 1] = qk[:, 1]
            return F.scaled_dot_product_attention(qk[:, 0, :, None], k_cache, v_cache)

        return attend

    def _logits(self, z: torch.Tensor, sub: int) -> torch.Tensor:
        z = self._norm(z)
        if self.guidance is not None:
            cond, uncond = z.chunk(2)
            s = self.guidance[sub]
            z = torch.lerp(uncond, cond, s) if s > 1 else cond  # uncond + s * (cond - uncond)
        return F.linear(z, self.heads[sub])

    def pre_logits(self, x: torch.Tensor, pos: torch.Tensor, n: int | None = None) -> torch.Tensor:
        """x (R, dim) at position `pos` through the spatial blocks and intra sub-step 0 -> pre logits."""
        if self.static and n is not None:
            raise ValueError("DecodeStep(static=True).pre_logits takes the position as a tensor only (n=None)")
        for layer, w in enumerate(self.spatial):
            x = self._block(x, w, self._spatial(layer, pos, n))
        for layer, w in enumerate(self.intra):
            x = self._block(x, w, self._intra(layer, 0))
        return self._logits(x, 0)

    def post_logits(self, pre: torch.Tensor) -> torch.Tensor:
        """pre (R,) sub-token ids through intra sub-step 1 -> post logits."""
        z = F.embedding(pre, self.pre_emb)
        for layer, w in enumerate(self.intra):
            z = self._block(z, w, self._intra(layer, 1))
        return self._logits(z, 1)


def _pair(name: str, value: Any, kind: type | tuple[type, ...]) -> tuple[Any, Any]:
    pair = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(pair) != 2 or not all(isinstance(v, kind) and not isinstance(v, bool) for v in pair):
        kinds = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise ValueError(f"generate: {name} must be {kinds} or a pair (pre, post) of them, got {value!r}")
    return pair


@torch.no_grad()
def generate(
    model: nn.Module,
    classes: torch.Tensor,
    *,
    cfg: float | tuple[float, float] = (1.0, 1.0),
    temperature: float | tuple[float, float] = (1.0, 1.0),
    top_k: int | tuple[int, int] = (0, 0),
    top_p: float | tuple[float, float] = (1.0, 1.0),
    seed: int = 0,
    num_tokens: int | None = None,
    return_logits: bool = False,
    compile: bool | str | Callable = False,
) -> Generated:
    """Sample token grids for `classes` (B,), settings per sub-token (pre, post) as in the official sampler.

    Classifier-free guidance batches [cond; null class] rows when a scale is > 1 and applies it per sub-token
    where its scale is > 1, as the official. The guided logits are formed before the (linear) head, so they equal
    the official combine up to rounding; with `return_logits=True` the per-row logits are computed and combined by
    `ops.sample_tokens` instead. Sub-token draws use `ops.sample_tokens` with offsets 2n and 2n + 1, so a (model,
    classes, settings, seed) reproduces its tokens. `compile`: True (inductor) or a torch.compile backend (name or
    callable) runs both halves of a static `DecodeStep` through `torch.compile(fullgraph=True)`; the first call pays
    the compilation (30-120 s with inductor on a shared 2-core CPU). On that CPU, 1 thread, 8 + 8 rows, dim 256: the
    compiled step gained 10-30 % over eager for 64 tokens but nothing for 256 (121 vs 120 tokens/s), where its
    full-length masked attention reads twice the cache that the eager prefix does; it is meant for devices where a
    static step pays off (no per-op launch overhead, graph capture).

    Example:
        >>> out = ARTransformer.from_preset("tiny").generate(torch.tensor([3, 7]), cfg=(1.9, 2.0), seed=1)
        >>> out.pre.shape, out.indices().shape
        (torch.Size([2, 64]), torch.Size([2, 64]))
    """
    from magvit2 import ops

    c = model.config
    cfg_, temp_ = _pair("cfg", cfg, (int, float)), _pair("temperature", temperature, (int, float))
    k_, p_ = _pair("top_k", top_k, int), _pair("top_p", top_p, (int, float))
    if not isinstance(classes, torch.Tensor) or classes.dim() != 1 or classes.is_floating_point():
        raise ValueError(f"generate: classes must be a (B,) integer tensor, got {getattr(classes, 'shape', classes)}")
    if classes.numel() and (int(classes.min()) < 0 or int(classes.max()) >= c.class_num):
        raise ValueError(
            f"generate: class ids must lie in [0, {c.class_num}), got [{int(classes.min())}, {int(classes.max())}]"
        )
    steps = c.block_size if num_tokens is None else num_tokens
    if not 1 <= steps <= c.block_size:
        raise ValueError(f"generate: num_tokens must be in [1, {c.block_size}], got {num_tokens}")
    if not (isinstance(compile, (bool, str)) or callable(compile)):
        raise ValueError(f"generate: compile must be a bool or a torch.compile backend, got {compile!r}")
    device = model.pre_emb.weight.device
    b = classes.shape[0]
    guided = any(s > 1 for s in cfg_)
    labels = classes.to(device)
    if guided:
        labels = torch.cat([labels, torch.full_like(labels, c.class_num)])
    was_training = model.training
    model.eval()
    # guidance folded into the step (combined before the head) unless the per-row logits are asked for
    fold = guided and not return_logits
    step = DecodeStep(
        model, rows=labels.shape[0], length=steps, guidance=cfg_ if fold else None, static=compile is not False
    )
    pre_logits, post_logits = step.pre_logits, step.post_logits
    if compile is not False:
        backend = "inductor" if compile is True else compile
        pre_logits = torch.compile(pre_logits, fullgraph=True, backend=backend)
        post_logits = torch.compile(post_logits, fullgraph=True, backend=backend)
    pre_out = torch.empty(b, steps, dtype=torch.long, device=device)
    post_out = torch.empty_like(pre_out)
    kept: list[list[torch.Tensor]] = [[], []]

    def draw(logits: torch.Tensor, sub: int, offset: int) -> torch.Tensor:
        if return_logits:
            kept[sub].append(logits[:b].clone())
        logits = logits.float()
        kwargs = dict(temperature=float(temp_[sub]), top_k=k_[sub], top_p=float(p_[sub]), seed=seed, offset=offset)
        if fold:
            return ops.sample_tokens(logits, **kwargs)
        if guided and cfg_[sub] > 1:
            return ops.sample_tokens(logits[:b], uncond=logits[b:], cfg_scale=float(cfg_[sub]), **kwargs)
        return ops.sample_tokens(logits[:b], **kwargs)

    try:
        x = model.class_emb.embedding_table(labels)  # (R, dim): position 0 is the class
        for n in range(steps):
            pos = step.positions[n]
            logits = pre_logits(x, pos) if step.static else pre_logits(x, pos, n)
            pre = draw(logits, 0, 2 * n)
            pre_rows = torch.cat([pre, pre]) if guided else pre  # both halves continue with the drawn sub-token
            post = draw(post_logits(pre_rows), 1, 2 * n + 1)
            post_rows = torch.cat([post, post]) if guided else post
            pre_out[:, n], post_out[:, n] = pre, post
            x = model.pre_emb(pre_rows) + model.post_emb(post_rows)
    finally:
        model.train(was_training)
    if return_logits:
        return Generated(pre_out, post_out, torch.stack(kept[0], dim=1), torch.stack(kept[1], dim=1))
    return Generated(pre_out, post_out)
