"""The official sampler's generation loop (reference §4.5), rebuilt on an `ARTransformer`'s weights: the baseline of
bench_generation.py.

What it reproduces, step by step: spatial KV caches of max_seq = 1 + T rounded up to a multiple of 8 (264 for
T = 256) with a materialised (B, S, S) boolean causal mask; a prefill of the class embedding at position 0; then one
position per step whose keys are written into the cache and whose attention runs over the whole cache under the mask
row `mask[:, None, pos]`; for every step a fresh intra KV cache and mask are allocated, sub-step 0 feeds h at intra
position 0 and samples pre, sub-step 1 feeds pre_emb(pre) at intra position 1 and samples post; each sub-token is
sampled by CFG combine uncond + (cond - uncond) * s (where s > 1), / temperature, sort-based top-k/top-p filtering
(when on), softmax and torch.multinomial; both halves of the batch continue with the drawn sub-token. Eager, with
separate w1/w3 projections and `RMSNorm`/`apply_rope` module calls as in the official blocks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from bench_sampling import official_step

from magvit2.nn.transformer import ARTransformer, Block, apply_rope


class _Cache:
    def __init__(self, rows: int, heads: int, length: int, head_dim: int, dtype: torch.dtype) -> None:
        self.k = torch.zeros(rows, heads, length, head_dim, dtype=dtype)
        self.v = torch.zeros(rows, heads, length, head_dim, dtype=dtype)
        self.mask = torch.tril(torch.ones(length, length, dtype=torch.bool)).unsqueeze(0).repeat(rows, 1, 1)


def _block(block: Block, x: torch.Tensor, rope: torch.Tensor, cache: _Cache, pos: torch.Tensor) -> torch.Tensor:
    """x (R, T, dim) at positions `pos` (T,), keys written at `pos`, attention over the whole cache under the mask."""
    attn = block.attention
    r, t, dim = x.shape
    q, k, v = attn.wqkv(block.attention_norm(x)).split(dim, dim=-1)
    q, k, v = (y.view(r, t, attn.n_head, attn.head_dim) for y in (q, k, v))
    q, k = apply_rope(q, rope), apply_rope(k, rope)
    q, k, v = (y.transpose(1, 2) for y in (q, k, v))
    cache.k[:, :, pos] = k
    cache.v[:, :, pos] = v
    mask = cache.mask[:, None, pos]  # (R, 1, T, S)
    out = F.scaled_dot_product_attention(q, cache.k, cache.v, attn_mask=mask, is_causal=False)
    h = x + attn.wo(out.transpose(1, 2).reshape(r, t, dim))
    ff, hn = block.feed_forward, block.ffn_norm(h)
    return h + ff.w2(F.silu(ff.w1(hn)) * ff.w3(hn))


def _sample(logits: torch.Tensor, b: int, cfg: float, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    logits = logits[:, -1].float()
    cond = logits[:b]
    if cfg > 1:
        return official_step(cond, logits[b:], cfg, temperature, top_k, top_p)
    return official_step(cond, cond, 1.0, temperature, top_k, top_p)  # cond + 0 * (...): no guidance


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
    max_seq = -(-(1 + steps) // 8) * 8
    spatial = [_Cache(r, c.n_head, max_seq, c.head_dim, dtype) for _ in model.spatial_blocks]
    x = model.class_emb.embedding_table(labels)[:, None]  # prefill: the class at position 0
    pre_out, post_out = [], []
    for n in range(steps):
        pos = torch.tensor([n])
        h = x
        for block, cache in zip(model.spatial_blocks, spatial, strict=True):
            h = _block(block, h, model.rope[pos], cache, pos)
        intra = [_Cache(r, c.n_head, 2, c.head_dim, dtype) for _ in model.factorized_blocks]  # fresh every step
        z, drawn = h, []
        for sub in range(2):
            pos = torch.tensor([sub])
            for block, cache in zip(model.factorized_blocks, intra, strict=True):
                z = _block(block, z, model.rope[pos], cache, pos)
            tok = _sample(model.head[sub](model.norm(z)), b, cfg[sub], temperature[sub], top_k[sub], top_p[sub])
            drawn.append(torch.cat([tok, tok]) if guided else tok)  # both halves continue with the drawn token
            z = model.pre_emb(drawn[0])[:, None]
        pre_out.append(drawn[0][:b])
        post_out.append(drawn[1][:b])
        x = (model.pre_emb(drawn[0]) + model.post_emb(drawn[1]))[:, None]
    return torch.stack(pre_out, dim=1), torch.stack(post_out, dim=1)
