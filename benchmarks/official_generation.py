"""The official sampler's generation loop (reference §4.5, `sample_Open_MAGVIT2` with `generate_context` and
`decode_subtoken`), rebuilt on an `ARTransformer`'s weights: the baseline of bench_generation.py.

It does the work the official loop does, allocation for allocation:
- spatial KV caches of max_seq = 1 + T rounded up to a multiple of 8 (264 for T = 256) and a materialised
  (R, S, S) boolean causal mask, set up once; a prefill of the class embedding at position 0, then one position per
  step whose keys are written into the cache and whose attention runs over the whole cache under the mask row
  `mask[:R, None, pos]`;
- every step a fresh set of intra KV caches, also max_seq long (the official `setup_factorized_caches` is passed the
  same max_seq_length), so the two intra sub-steps attend over 264 masked slots;
- in every attention the keys and values pass through `repeat_interleave(n_head // n_kv_head)` (a copy of the whole
  cache, also for a factor of 1), and q, k are rotated by the official rotary (a contiguous copy, fp32 pairs,
  stacked); RMSNorm as its own fp32 module call; separate w1/w3 projections;
- sub-token i: logits (R, 1, V), CFG combine `uncond + (cond - uncond) * s` where s > 1, then
  `sample_from_logits` (/ temperature, `top_k_top_p_filtering` with its boolean-index writes when a filter is on,
  softmax, torch.multinomial); both halves of the batch continue with the drawn sub-token; the drawn columns are
  appended to the output with torch.cat each step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from bench_sampling import official_filter

from magvit2.nn.ar.transformer import ARTransformer, Block


def _round8(n: int) -> int:
    return -(-n // 8) * 8


class _Cache:
    def __init__(self, rows: int, heads: int, length: int, head_dim: int, dtype: torch.dtype) -> None:
        self.k = torch.zeros(rows, heads, length, head_dim, dtype=dtype)
        self.v = torch.zeros(rows, heads, length, head_dim, dtype=dtype)

    def update(self, pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        assert pos.shape[0] == k.shape[2]
        self.k[:, :, pos] = k
        self.v[:, :, pos] = v
        return self.k, self.v


def _rms(norm: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    xf = x.float()
    return (xf * torch.rsqrt(torch.mean(xf * xf, dim=-1, keepdim=True) + norm.eps)).type_as(x) * norm.weight


def _rotary(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """x (R, T, H, D) by the freqs rows (T, D/2, 2): the official arithmetic. The official returns fp32 and so
    cannot fill a float64 model's caches; the cast back (a no-op at fp32, the benchmark's dtype) lets the float64
    greedy check run."""
    pairs = x.contiguous().float().view(*x.shape[:-1], -1, 2)
    f = freqs.view(1, pairs.size(1), 1, pairs.size(3), 2).to(pairs.dtype)
    a, b = pairs[..., 0], pairs[..., 1]
    return torch.stack([a * f[..., 0] - b * f[..., 1], b * f[..., 0] + a * f[..., 1]], dim=-1).flatten(3).type_as(x)


def _block(block: Block, x: torch.Tensor, freqs: torch.Tensor, cache: _Cache, pos: torch.Tensor, mask) -> torch.Tensor:
    attn = block.attention
    r, t, dim = x.shape
    q, k, v = attn.wqkv(_rms(block.attention_norm, x)).split([dim, dim, dim], dim=-1)
    q, k, v = (y.view(r, t, attn.n_head, attn.head_dim) for y in (q, k, v))
    q, k = _rotary(q, freqs), _rotary(k, freqs)
    q, k, v = (y.transpose(1, 2) for y in (q, k, v))
    keys, values = cache.update(pos, k, v)
    keys, values = keys.repeat_interleave(1, dim=1), values.repeat_interleave(1, dim=1)  # n_head // n_kv_head
    out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, is_causal=False)
    h = x + attn.wo(out.transpose(1, 2).contiguous().view(r, t, dim))
    ff, hn = block.feed_forward, _rms(block.ffn_norm, h)
    return h + ff.w2(F.silu(ff.w1(hn)) * ff.w3(hn))


def _sample(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    logits = logits[:, -1, :] / temperature
    if top_k > 0 or top_p < 1.0:
        logits = official_filter(logits, top_k, top_p)
    return torch.multinomial(F.softmax(logits, dim=-1), num_samples=1)  # (B, 1)


@torch.no_grad()
def official_generate(
    model: ARTransformer,
    classes: torch.Tensor,
    *,
    cfg: tuple[float, float] = (1.0, 1.0),
    temperature: tuple[float, float] = (1.0, 1.0),
    top_k: tuple[int, int] = (0, 0),
    top_p: tuple[float, float] = (1.0, 1.0),
    num_tokens: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(pre, post) (B, T) token grids, drawn from torch's global generator (seed it with torch.manual_seed)."""
    c = model.config
    steps = num_tokens or c.block_size
    b = classes.shape[0]
    guided = cfg[0] > 1
    labels = torch.cat([classes, torch.full_like(classes, c.class_num)]) if guided else classes
    r, dtype = labels.shape[0], model.pre_emb.weight.dtype
    max_seq = _round8(1 + steps)
    spatial = [_Cache(r, c.n_head, max_seq, c.head_dim, dtype) for _ in model.spatial_blocks]
    causal = torch.tril(torch.ones(max_seq, max_seq, dtype=torch.bool)).unsqueeze(0).repeat(r, 1, 1)
    freqs_all = model.rope
    x = model.class_emb.embedding_table(labels[:, None])  # prefill: the class at position 0, (R, 1, dim)
    pre_out, post_out = classes[:, None], classes[:, None]
    pos = torch.arange(0, 1)  # the prefill position; then [1], then + 1 per step
    for n in range(steps):
        if n == 1:
            pos = torch.tensor([1])
        elif n > 1:
            pos = pos + 1
        h, mask, freqs = x, causal[:r, None, pos], freqs_all[pos]
        for block, cache in zip(model.spatial_blocks, spatial, strict=True):
            h = _block(block, h, freqs, cache, pos, mask)
        intra = [_Cache(r, c.n_head, max_seq, c.head_dim, dtype) for _ in model.factorized_blocks]  # every step
        z, drawn = h, []
        for sub in range(2):
            sub_pos = torch.tensor([sub])
            mask, freqs = causal[:r, None, sub_pos], freqs_all[sub_pos]
            for block, cache in zip(model.factorized_blocks, intra, strict=True):
                z = _block(block, z, freqs, cache, sub_pos, mask)
            logits = model.head[sub](_rms(model.norm, z))  # (R, 1, V)
            if cfg[sub] > 1:
                cond, uncond = torch.split(logits, b, dim=0)
                logits = uncond + (cond - uncond) * cfg[sub]
            elif guided:
                logits = logits[:b]
            tok = _sample(logits, temperature[sub], top_k[sub], top_p[sub])  # (B, 1)
            drawn.append(torch.cat([tok, tok]) if guided else tok)  # both halves continue with the drawn token
            z = model.pre_emb(drawn[0])  # (R, 1, dim)
        pre_out = torch.cat((pre_out, drawn[0][:b]), dim=1)
        post_out = torch.cat((post_out, drawn[1][:b]), dim=1)
        x = model.pre_emb(drawn[0]) + model.post_emb(drawn[1])
    return pre_out[:, 1:], post_out[:, 1:]
