"""Token-by-token generation for `ARTransformer`: a static-shape decode step and the sampling loop around it.

A step feeds one new position for R rows (B conditional rows, then B null-class rows under classifier-free guidance)
through the spatial blocks, writing k, v into preallocated caches, then runs the two intra sub-steps: sub-step 0
gives the pre logits, sub-step 1 (fed pre_emb(sampled pre)) the post logits. Sampling stays outside the step because
`ops.sample_tokens` takes its stream offset as a Python int, which a compiled graph would specialise on.

The step works on the model's own weights in the layouts a decode wants: the RMSNorm weights folded into the next
projection, w1/w3 in one matrix (26 matmuls a token instead of 32), (in, out) layout, and guided logits formed
before the linear head (half the rows through the 4096-way post head). Eager steps run each block as one
`ops.decode_block` call and the head as one `ops.decode_logits` call: on a CPU these are fused C++ kernels with
their own small-M matmul tiles (weights in 16-column panels) and attention over the written prefix of the cache.
Measured on the 2-core EPYC, 1 thread, 8 + 8 rows of a dim-256 model with 4 + 1 layers: 10 ms a token position
against 18-19 ms for the same step as ~80 tensor ops. A static step (for `torch.compile(fullgraph=True)`) runs
tensor ops that attend over the whole cache under a mask built from the position tensor, so one graph serves
every position.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from magvit2 import ops
from magvit2.nn.ar.transformer import ARTransformer
from magvit2.ops.ar_decode import prefers_panels
from magvit2.ops.reference import ar_decode as ref


class KVCache(NamedTuple):
    k: torch.Tensor  # (R, H, S, D), preallocated; one per layer (a compiled step writes a whole input in place,
    v: torch.Tensor  # where a slice of one (L, ...) tensor would be copied back whole at every call)


class Generated(NamedTuple):
    pre: torch.Tensor  # (B, T) int64, bits 0..k0-1 of each token
    post: torch.Tensor  # (B, T) int64, the remaining bits
    logits_pre: torch.Tensor | None = None  # (B, T, 2^k0) conditional logits before guidance (return_logits=True)
    logits_post: torch.Tensor | None = None  # (B, T, 2^k1)


class _Weights(NamedTuple):
    """One block's weights as the decode step uses them: (in, out) layout, RMSNorm weights folded in."""

    wqkv: torch.Tensor  # (dim, 3 dim): (wqkv * attention_norm)^T
    wo: torch.Tensor  # (dim, dim)
    w13: torch.Tensor  # (dim, 2 hidden): [w1; w3]^T * ffn_norm
    w2: torch.Tensor  # (hidden, dim)


def _weights(block: nn.Module, panels: bool) -> _Weights:  # a transformer Block
    ff, g1, g2 = block.feed_forward, block.attention_norm.weight, block.ffn_norm.weight
    return _Weights(
        ops.decode_weight([block.attention.wqkv.weight], g1, panels=panels),
        ops.decode_weight([block.attention.wo.weight], panels=panels),
        ops.decode_weight([ff.w1.weight, ff.w3.weight], g2, panels=panels),
        ops.decode_weight([ff.w2.weight], panels=panels),
    )


class DecodeWeights(NamedTuple):
    """A model's weights in the layouts a decode step reads (see `decode_weights`)."""

    spatial: list[_Weights]
    intra: list[_Weights]
    heads: list[torch.Tensor]  # (dim, V) or its panels, model.norm folded in


# model -> (key, DecodeWeights). Outside the module (no state_dict entry, nothing copied by deepcopy or pickled) and
# weak, so the panels go with the model.
_DECODE_WEIGHTS: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, DecodeWeights]] = weakref.WeakKeyDictionary()


def _weights_key(model: ARTransformer, panels: bool) -> tuple:
    """What the decode weights are derived from: each parameter's identity, storage and version counter (bumped by
    every in-place write: optimizer steps, load_state_dict, copy_ under no_grad), device, dtype and shape."""
    params = tuple((id(p), p.data_ptr(), p._version, p.device, p.dtype, tuple(p.shape)) for p in model.parameters())
    return (panels, params)


def _cacheable(model: ARTransformer) -> bool:
    # parameters made under torch.inference_mode keep no version counter: their copies are rebuilt at every call
    return not any(p.is_inference() for p in model.parameters())


def decode_weights(model: ARTransformer, *, panels: bool) -> DecodeWeights:
    """The model's block and head weights in decode layouts (RMSNorm weights folded in, (in, out), as 16-column
    panels when `panels`), built once and reused by every generation until a parameter changes.

    The copies replace nothing (the module keeps its own weights for training and state_dict), so they cost their
    bytes once, about the model's size, for as long as the model lives: at the AR-B preset (343.6M parameters, 1,311
    MiB) they are 1,296 MiB, built in 2.2 s by the first call; rebuilt at every call they cost 2.8-3.0 s before the
    first token and 1.6-1.8 GiB of peak memory above the model (benchmarks/bench_decode_weights.py). A change of any
    parameter (a new tensor, `.to()`, an in-place write that bumps its version counter) rebuilds them at the next
    call; writes through `.data` bypass the version counter: call `release_decode_weights(model)` after them."""
    cacheable = _cacheable(model)
    key = _weights_key(model, panels) if cacheable else None
    cached = _DECODE_WEIGHTS.get(model)
    if cached is not None and cached[0] == key:
        return cached[1]
    release_decode_weights(model)  # the stale copies go before the new ones are built (one copy at a time)
    built = DecodeWeights(
        [_weights(b, panels) for b in model.spatial_blocks],
        [_weights(b, panels) for b in model.factorized_blocks],
        [ops.decode_weight([h.weight], model.norm.weight, panels=panels) for h in model.head],
    )
    if cacheable:
        _DECODE_WEIGHTS[model] = (key, built)
    return built


def release_decode_weights(model: ARTransformer) -> None:
    """Drop the decode-layout copies of `model`'s weights (`decode_weights`), e.g. to free their memory between
    generations or after writing the weights through `.data`."""
    _DECODE_WEIGHTS.pop(model, None)


class DecodeStep(nn.Module):
    """Decode state for `rows` sequences of up to `length` tokens: spatial KV caches, the intra 2-slot cache, RoPE,
    and the model's weights in decode layouts (`decode_weights`: built once per model and reused until a parameter
    changes; not trainable).

    `pre_logits(x, pos)`: x (R, dim) embedding of position `pos` (0-d int64 tensor; position 0 is the class) ->
    pre logits. `post_logits(pre)`: pre (R,) sampled pre ids of that position -> post logits. Logits are (R, V)
    per row; with `guidance=(s0, s1)` the R = 2B rows are [cond; null class] and the logits are the guided
    (B, V) uncond + s * (cond - uncond) (cond alone where s <= 1), combined before the head, which is linear: half
    the rows through the largest matmul of the step (the 4096-way post head).
    Each block is one `ops.decode_block` call (on a CPU one fused kernel: 2.3x fewer ms per step than the ~40
    tensor ops it replaces, 8 + 8 rows of dim 256). With `static=True` the blocks run as tensor ops with the same
    shapes at every position and no Python value depending on `pos` (attention over the whole cache under a mask),
    so `torch.compile(step.pre_logits, fullgraph=True)` gives one graph for all positions.

    Example:
        >>> model = ARTransformer.from_preset("tiny").eval()
        >>> step = DecodeStep(model, rows=2, length=64)
        >>> x = model.class_emb.embedding_table(torch.tensor([3, 7]))
        >>> step.pre_logits(x, torch.tensor(0)).shape, step.post_logits(torch.tensor([5, 9])).shape
        (torch.Size([2, 64]), torch.Size([2, 4096]))
    """

    def __init__(
        self,
        model: ARTransformer,
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
        # the 16-column panels where the decode kernel streams them (ops.decode_panels); (in, out) otherwise
        # built once per model and reused until its parameters change (decode_weights)
        weights = decode_weights(model, panels=not static and prefers_panels(device, dtype))
        self.spatial, self.intra, self.heads = weights.spatial, weights.intra, weights.heads
        self.pre_emb = model.pre_emb.weight.detach()
        shape = (rows, c.n_head, length, c.head_dim)
        two = (rows, c.n_head, 2, c.head_dim)
        self.cache = [KVCache(*(torch.zeros(shape, device=device, dtype=dtype) for _ in "kv")) for _ in self.spatial]
        self.intra_cache = [KVCache(*(torch.zeros(two, device=device, dtype=dtype) for _ in "kv")) for _ in self.intra]
        # RoPE rows (fp32, as apply_rope computes); rows 0 and 1 also serve the intra positions
        self.rope = model.rope[: max(length, 2)].to(device).contiguous()  # (S, D/2, 2)
        self.positions = torch.arange(max(length, 2), device=device)

    def _block(self, x: torch.Tensor, w: _Weights, cache: KVCache, pos: torch.Tensor) -> torch.Tensor:
        """One block at cache position `pos` (0-d tensor)."""
        if not self.static:
            return ops.decode_block(x, *w, cache.k, cache.v, self.rope, pos, self.eps)
        # static: the same shapes and ops at every position (k, v written by index_put_, attention under a mask)
        r, at = x.shape[0], pos.view(1)
        qkv = (ref.rms(x, self.eps) @ w.wqkv).view(r, 3, self.n_head, self.head_dim)
        qk = ref.rotate(qkv[:, :2], self.rope.index_select(0, at)[0])  # (R, 2, H, D)
        cache.k[:, :, at] = qk[:, 1, :, None]
        cache.v[:, :, at] = qkv[:, 2, :, None]
        mask = (torch.arange(cache.k.shape[2], device=x.device) <= pos).view(1, 1, 1, -1)  # positions written
        att = F.scaled_dot_product_attention(qk[:, 0, :, None], cache.k, cache.v, attn_mask=mask)
        h = torch.addmm(x, att.reshape(r, self.dim), w.wo)
        a, b = (ref.rms(h, self.eps) @ w.w13).chunk(2, dim=-1)
        return torch.addmm(h, F.silu(a) * b, w.w2)

    def _logits(self, z: torch.Tensor, sub: int) -> torch.Tensor:
        # guided: uncond + s * (cond - uncond) where s > 1; cond alone (lerp weight 1) where not
        s = None if self.guidance is None else (self.guidance[sub] if self.guidance[sub] > 1 else 1.0)
        logits = ref.decode_logits if self.static else ops.decode_logits  # static: tensor ops, for a compiled graph
        return logits(z, self.heads[sub], self.eps, s)

    def pre_logits(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """x (R, dim) at position `pos` (0-d int64 tensor) through the spatial blocks and intra sub-step 0 ->
        pre logits."""
        for w, cache in zip(self.spatial, self.cache, strict=True):
            x = self._block(x, w, cache, pos)
        for w, cache in zip(self.intra, self.intra_cache, strict=True):
            x = self._block(x, w, cache, self.positions[0])
        return self._logits(x, 0)

    def post_logits(self, pre: torch.Tensor) -> torch.Tensor:
        """pre (R,) sub-token ids through intra sub-step 1 -> post logits."""
        z = F.embedding(pre, self.pre_emb)
        for w, cache in zip(self.intra, self.intra_cache, strict=True):
            z = self._block(z, w, cache, self.positions[1])
        return self._logits(z, 1)


def _pair(name: str, value: Any, kind: type | tuple[type, ...]) -> tuple[Any, Any]:
    pair = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(pair) != 2 or not all(isinstance(v, kind) and not isinstance(v, bool) for v in pair):
        kinds = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise ValueError(f"generate: {name} must be {kinds} or a pair (pre, post) of them, got {value!r}")
    return pair


@torch.no_grad()
def generate(
    model: ARTransformer,
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
    the compilation (30-120 s with inductor on a shared 2-core CPU). The static step is meant for GPUs (no per-op
    launch overhead, graph capture); on a CPU the eager step's fused kernels are faster (1 thread, 8 + 8 rows, dim
    256, 256 tokens: 729 tokens/s eager, 368 compiled).

    Example:
        >>> out = generate(ARTransformer.from_preset("tiny"), torch.tensor([3, 7]), cfg=(1.9, 2.0), seed=1)
        >>> out.pre.shape, out.post.shape
        (torch.Size([2, 64]), torch.Size([2, 64]))
    """
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
    if b == 0:  # no images: empty grids (and logits) of the asked length, no step built
        empty = torch.empty(0, steps, dtype=torch.long, device=device)
        if not return_logits:
            return Generated(empty, empty.clone())
        dtype = model.pre_emb.weight.dtype
        shapes = [(0, steps, h.out_features) for h in model.head]
        return Generated(empty, empty.clone(), *(torch.empty(s, dtype=dtype, device=device) for s in shapes))
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
            logits = pre_logits(x, pos)
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
