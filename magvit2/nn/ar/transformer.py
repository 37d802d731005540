"""The Open-MAGVIT2 class-conditional AR transformer (reference §4): a Llama-style spatial transformer over the
16 x 16 token grid, and a small "intra" transformer that predicts each token's two sub-tokens one after the other.

Each 18-bit token is split LSB-first into pre (bits 0..5, 64 values) and post (bits 6..17, 4096 values). The spatial
sequence is [class embedding, e(t_0), ..., e(t_254)] with e(t) = pre_emb(pre) + post_emb(post); position k's output h_k
predicts token k through the intra sequence [h_k, pre_emb(pre_k)]: position 0 gives the pre logits, position 1 (which
sees the true pre, teacher forcing) the post logits. `state_dict()` keys and shapes are the official `transformer.*`
ones (188 / 279 / 370 tensors for B / L / XL).

Official conventions kept: RMSNorm in fp32, weight only; fused bias-free wqkv; SwiGLU with hidden
find_multiple(int(8 * dim / 3), 256); 2D RoPE whose first half of each head rotates with the row and second half with
the column, interleaved pairs, and a zero table row for the class position (its q and k are zeroed, as in LlamaGen;
the intra transformer uses rows [zero, identity] of the same table); no norm between the spatial and intra stacks, one
shared final norm; all Linear/Embedding weights N(0, 0.02) and zero heads; the class table has a null row (index
class_num) used for label dropout (p = 0.1 in training) and classifier-free guidance.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from magvit2.nn.checks import check_config_floats, check_config_ints, check_values

# Upper bounds of the architecture fields, far above the released models (XL: dim 1536, 36 + 4 layers, 256 tokens,
# 1000 classes): a mistyped value is an error naming the field, not a huge allocation or a hang. Each sub-token's
# embedding and head have 2^bits rows: bits <= 18 (the whole official codebook).
AR_BOUNDS = {"dim": (1, 16384), "n_head": (1, 256), "spatial_n_layer": (1, 256), "factorized_n_layer": (1, 256),
             "block_size": (1, 2**16), "class_num": (1, 2**20), "cls_token_num": (1, 1024), "multiple_of": (1, 4096),
             "vocab_size": (1, 2**30)}  # fmt: skip
AR_FLOAT_FIELDS = ("token_drop", "resid_dropout_p", "ffn_dropout_p", "attn_dropout_p", "class_dropout_prob",
                   "rope_base", "norm_eps", "initializer_range", "drop_path_rate")  # fmt: skip
MAX_SUB_TOKEN_BITS = 18


@dataclasses.dataclass
class ARConfig:
    """Official `GPT` arguments (imagenet_conditional_llama_{B,L,XL}.yaml); defaults are preset B."""

    dim: int = 1024
    n_head: int = 16
    n_kv_head: int | None = None  # accepted for compatibility; must equal n_head (no GQA in the released models)
    spatial_n_layer: int = 24
    factorized_n_layer: int = 2
    block_size: int = 256  # tokens per image (16 x 16)
    class_num: int = 1000
    factorized_bits: tuple[int, int] = (6, 12)
    token_drop: float = 0.1  # element-wise dropout on the spatial input embeddings
    resid_dropout_p: float = 0.1
    ffn_dropout_p: float = 0.1
    attn_dropout_p: float = 0.0
    class_dropout_prob: float = 0.1  # label -> null class during training
    cls_token_num: int = 1
    rope_base: float = 10000.0
    norm_eps: float = 1e-5
    multiple_of: int = 256
    ffn_dim_multiplier: float | None = None
    initializer_range: float = 0.02
    vocab_size: int = 512  # accepted for compatibility; unused with factorized sub-tokens
    drop_path_rate: float = 0.0  # accepted for compatibility; must be 0

    def __post_init__(self) -> None:
        check_config_ints(self, AR_BOUNDS)
        check_config_floats(self, AR_FLOAT_FIELDS)
        bits = self.factorized_bits
        if not isinstance(bits, (list, tuple)) or len(bits) != 2 or not all(isinstance(b, int) for b in bits):
            raise ValueError(f"ARConfig.factorized_bits must be two ints, got {bits!r}")
        self.factorized_bits = tuple(bits)
        if not all(1 <= b <= MAX_SUB_TOKEN_BITS for b in self.factorized_bits):
            raise ValueError(f"ARConfig.factorized_bits must be two ints in [1, {MAX_SUB_TOKEN_BITS}], got {bits!r}")
        if self.dim % self.n_head or (self.dim // self.n_head) % 4:
            raise ValueError(f"ARConfig: dim {self.dim} / n_head {self.n_head} must give a head size divisible by 4")
        if self.ffn_dim_multiplier is not None:
            check_config_floats(self, ("ffn_dim_multiplier",))
        if self.n_kv_head not in (None, self.n_head):
            raise ValueError(f"ARConfig.n_kv_head must be None or n_head ({self.n_head}), got {self.n_kv_head!r}")
        if len(self.factorized_bits) != 2 or min(self.factorized_bits) < 1:
            raise ValueError(f"ARConfig.factorized_bits must be two positive ints, got {self.factorized_bits!r}")
        side = math.isqrt(self.block_size)
        if side * side != self.block_size:
            raise ValueError(f"ARConfig.block_size must be a square grid size, got {self.block_size}")
        if self.cls_token_num != 1:
            raise ValueError("ARConfig.cls_token_num: only 1 (one class token) is supported")
        if self.drop_path_rate != 0:
            raise ValueError("ARConfig.drop_path_rate: only 0 is supported (the released models use 0)")
        for name in ("token_drop", "resid_dropout_p", "ffn_dropout_p", "attn_dropout_p", "class_dropout_prob"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"ARConfig.{name} must be in [0, 1), got {getattr(self, name)!r}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_head

    @property
    def grid_size(self) -> int:
        return math.isqrt(self.block_size)

    @property
    def ffn_hidden(self) -> int:
        hidden = int(2 * (4 * self.dim) / 3)
        if self.ffn_dim_multiplier is not None:
            hidden = int(self.ffn_dim_multiplier * hidden)
        return -(-hidden // self.multiple_of) * self.multiple_of

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ARConfig:
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise ValueError(f"ARConfig: unknown field(s) {unknown}; valid fields: {names}")
        return cls(**d)

    @classmethod
    def from_section(cls, section: dict[str, Any]) -> ARConfig:
        """A run config's `model` section: an optional "preset" (an AR_PRESETS name) plus field overrides; YAML lists
        of the tuple fields become tuples."""
        fields = {k: tuple(v) if isinstance(v, list) else v for k, v in section.items()}
        preset = fields.pop("preset", None)
        return dataclasses.replace(AR_PRESETS[preset] if preset else cls(), **fields)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["factorized_bits"] = list(self.factorized_bits)
        return d


AR_PRESETS = {
    "open-magvit2-ar-B": ARConfig(dim=1024, n_head=16, spatial_n_layer=24, factorized_n_layer=2),
    "open-magvit2-ar-L": ARConfig(dim=1280, n_head=20, spatial_n_layer=36, factorized_n_layer=3),
    "open-magvit2-ar-XL": ARConfig(dim=1536, n_head=24, spatial_n_layer=48, factorized_n_layer=4),
    "tiny": ARConfig(dim=64, n_head=4, spatial_n_layer=2, factorized_n_layer=1, block_size=64, class_num=10),
}


def rope_table_2d(grid_size: int, head_dim: int, base: float = 10000.0) -> torch.Tensor:
    """(1 + grid^2, head_dim / 2, 2) cos/sin table: row 0 (class position) all zero; row 1 + r * grid + c rotates
    the first head_dim / 2 channels (as head_dim / 4 pairs) by r * f and the second half by c * f."""
    half, cpu = head_dim // 2, torch.device("cpu")  # on the CPU even under a meta-device context (built from files)
    freqs = 1.0 / (base ** (torch.arange(0, half, 2, device=cpu)[: half // 2].double() / half))  # (head_dim / 4,)
    pos = torch.arange(grid_size, dtype=torch.float64, device=cpu)
    angles = torch.outer(pos, freqs)  # (grid, head_dim / 4)
    grid = torch.cat(
        [angles[:, None, :].expand(-1, grid_size, -1), angles[None, :, :].expand(grid_size, -1, -1)], dim=-1
    )  # (grid, grid, head_dim / 2): rows, then columns
    table = torch.stack([grid.cos(), grid.sin()], dim=-1).flatten(0, 1)  # (grid^2, head_dim / 2, 2)
    return torch.cat([torch.zeros(1, half, 2, dtype=torch.float64, device=cpu), table]).float()


def apply_rope(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """x (B, T, H, D), table (T, D / 2, 2): rotate interleaved pairs (x[2i], x[2i+1]); computed in fp32."""
    pairs = x.float().unflatten(-1, (-1, 2))  # (B, T, H, D/2, 2)
    cos, sin = table[None, :, None, :, 0], table[None, :, None, :, 1]
    a, b = pairs[..., 0], pairs[..., 1]
    return torch.stack([a * cos - b * sin, b * cos + a * sin], dim=-1).flatten(-2).type_as(x)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.square().mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


class Attention(nn.Module):
    def __init__(self, config: ARConfig) -> None:
        super().__init__()
        self.n_head, self.head_dim, self.dim = config.n_head, config.head_dim, config.dim
        self.wqkv = nn.Linear(config.dim, 3 * config.dim, bias=False)
        self.wo = nn.Linear(config.dim, config.dim, bias=False)
        self.attn_dropout_p = config.attn_dropout_p
        self.resid_dropout = nn.Dropout(config.resid_dropout_p)

    def forward(self, x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = self.wqkv(x).split(self.dim, dim=-1)
        q, k, v = (y.view(b, t, self.n_head, self.head_dim) for y in (q, k, v))
        q, k = apply_rope(q, rope), apply_rope(k, rope)
        q, k, v = (y.transpose(1, 2) for y in (q, k, v))  # (B, H, T, D)
        p = self.attn_dropout_p if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=p)
        return self.resid_dropout(self.wo(out.transpose(1, 2).reshape(b, t, self.dim)))


class FeedForward(nn.Module):
    def __init__(self, config: ARConfig) -> None:
        super().__init__()
        self.w1 = nn.Linear(config.dim, config.ffn_hidden, bias=False)
        self.w3 = nn.Linear(config.dim, config.ffn_hidden, bias=False)
        self.w2 = nn.Linear(config.ffn_hidden, config.dim, bias=False)
        self.ffn_dropout = nn.Dropout(config.ffn_dropout_p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ffn_dropout(self.w2(F.silu(self.w1(x)) * self.w3(x)))


class Block(nn.Module):
    """Pre-norm: h = x + attention(norm(x)); out = h + feed_forward(norm(h))."""

    def __init__(self, config: ARConfig) -> None:
        super().__init__()
        self.attention = Attention(config)
        self.feed_forward = FeedForward(config)
        self.attention_norm = RMSNorm(config.dim, config.norm_eps)
        self.ffn_norm = RMSNorm(config.dim, config.norm_eps)

    def forward(self, x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
        h = x + self.attention(self.attention_norm(x), rope)
        return h + self.feed_forward(self.ffn_norm(h))


class LabelEmbedder(nn.Module):
    """Class embedding with a null class (index class_num) for label dropout and classifier-free guidance."""

    def __init__(self, class_num: int, dim: int, dropout_prob: float) -> None:
        super().__init__()
        self.class_num, self.dropout_prob = class_num, dropout_prob
        self.embedding_table = nn.Embedding(class_num + 1, dim)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        if self.training and self.dropout_prob > 0:
            drop = torch.rand(labels.shape, device=labels.device) < self.dropout_prob
            labels = torch.where(drop, torch.full_like(labels, self.class_num), labels)
        return self.embedding_table(labels).unsqueeze(1)  # (B, 1, dim)


class ARLogits(NamedTuple):
    pre: torch.Tensor  # (B, T, 2^k0)
    post: torch.Tensor  # (B, T, 2^k1)


class ARTransformer(nn.Module):
    """Class-conditional factorized AR transformer.

    Example:
        >>> model = ARTransformer.from_preset("tiny")
        >>> pre, post = torch.randint(0, 64, (2, 64)), torch.randint(0, 4096, (2, 64))
        >>> logits = model(pre, post, torch.tensor([3, 7]))
        >>> logits.pre.shape, logits.post.shape
        (torch.Size([2, 64, 64]), torch.Size([2, 64, 4096]))
    """

    def __init__(self, config: ARConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or ARConfig()
        k0, k1 = c.factorized_bits
        self.pre_emb = nn.Embedding(2**k0, c.dim)
        self.post_emb = nn.Embedding(2**k1, c.dim)
        self.class_emb = LabelEmbedder(c.class_num, c.dim, c.class_dropout_prob)
        self.token_drop = nn.Dropout(c.token_drop)
        self.spatial_blocks = nn.ModuleList(Block(c) for _ in range(c.spatial_n_layer))
        self.factorized_blocks = nn.ModuleList(Block(c) for _ in range(c.factorized_n_layer))
        self.norm = RMSNorm(c.dim, c.norm_eps)
        self.head = nn.ModuleList([nn.Linear(c.dim, 2**k0, bias=False), nn.Linear(c.dim, 2**k1, bias=False)])
        # a plain attribute, not a buffer: not in state_dict (as the official freqs_cis), moved by _apply below
        self.rope = rope_table_2d(c.grid_size, c.head_dim, c.rope_base)
        self.reset_parameters()

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> ARTransformer:
        """ "open-magvit2-ar-B" | "-L" | "-XL" (343.6M / 804.4M / 1486.7M parameters) or "tiny"."""
        if name not in AR_PRESETS:
            raise ValueError(f"unknown AR preset {name!r}; choose from {sorted(AR_PRESETS)}")
        return cls(dataclasses.replace(AR_PRESETS[name], **overrides))

    def reset_parameters(self) -> None:
        std = self.config.initializer_range
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, 0.0, std)
            elif isinstance(m, RMSNorm):
                nn.init.ones_(m.weight)
        for h in self.head:
            nn.init.zeros_(h.weight)  # zero heads: uniform predictions at initialisation

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        self.rope = fn(self.rope).float()  # follows .to(device); stays fp32 under .half()/.bfloat16()
        return self

    def _check(self, pre: torch.Tensor, post: torch.Tensor, cls: torch.Tensor) -> None:
        c = self.config
        k0, k1 = c.factorized_bits
        for name, t, hi in (("pre", pre, 2**k0), ("post", post, 2**k1)):
            if not isinstance(t, torch.Tensor) or t.dtype not in (torch.int64, torch.int32) or t.dim() != 2:
                raise ValueError(f"ARTransformer: {name} must be an int64 (B, T) tensor, got {getattr(t, 'shape', t)}")
            if t.shape[1] > c.block_size or t.shape[1] < 1:
                raise ValueError(f"ARTransformer: {name} has {t.shape[1]} tokens; expected 1..{c.block_size}")
            if check_values(t) and (int(t.min()) < 0 or int(t.max()) >= hi):
                lo_hi = f"[{int(t.min())}, {int(t.max())}]"
                raise ValueError(f"ARTransformer: {name} ids must lie in [0, {hi}), got {lo_hi}")
        if pre.shape != post.shape:
            raise ValueError(f"ARTransformer: pre {tuple(pre.shape)} and post {tuple(post.shape)} differ in shape")
        if not isinstance(cls, torch.Tensor) or cls.dim() != 1 or cls.shape[0] != pre.shape[0]:
            got = getattr(cls, "shape", cls)
            raise ValueError(f"ARTransformer: cls must be (B,) = ({pre.shape[0]},) class ids, got {got}")
        if check_values(cls) and (int(cls.min()) < 0 or int(cls.max()) > c.class_num):
            raise ValueError(f"ARTransformer: class ids must lie in [0, {c.class_num}] ({c.class_num} = null class)")

    def forward(self, pre: torch.Tensor, post: torch.Tensor, cls: torch.Tensor) -> ARLogits:
        """Teacher-forced logits for every token: pre/post (B, T) sub-token ids (T <= block_size, raster order),
        cls (B,) class ids (class_num = null). Output k predicts token k."""
        self._check(pre, post, cls)
        t = pre.shape[1]
        tokens = self.pre_emb(pre) + self.post_emb(post)  # (B, T, dim)
        h = torch.cat([self.class_emb(cls).to(tokens.dtype), tokens[:, :-1]], dim=1)  # (B, T, dim)
        h = self.token_drop(h)
        rope = self.rope[:t].to(h.device)
        for block in self.spatial_blocks:
            h = block(h, rope)
        return self.intra(h, pre)

    def intra(self, h: torch.Tensor, pre: torch.Tensor) -> ARLogits:
        """Next-sub-token head: [h_k, pre_emb(pre_k)] through the intra blocks -> (pre logits, post logits)."""
        b, t, d = h.shape
        x = torch.stack([h, self.pre_emb(pre).to(h.dtype)], dim=2).view(b * t, 2, d)  # (B*T, 2, dim)
        rope = self.rope[:2].to(h.device)
        for block in self.factorized_blocks:
            x = block(x, rope)
        x = self.norm(x)
        return ARLogits(self.head[0](x[:, 0]).view(b, t, -1), self.head[1](x[:, 1]).view(b, t, -1))

    def loss(self, pre: torch.Tensor, post: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
        """CE(pre) + CE(post), each a mean over tokens (the official objective)."""
        logits = self(pre, post, cls)
        return F.cross_entropy(logits.pre.flatten(0, 1).float(), pre.flatten()) + F.cross_entropy(
            logits.post.flatten(0, 1).float(), post.flatten()
        )


__all__ = [
    "AR_PRESETS",
    "ARConfig",
    "ARLogits",
    "ARTransformer",
    "Attention",
    "Block",
    "FeedForward",
    "LabelEmbedder",
    "RMSNorm",
    "apply_rope",
    "rope_table_2d",
]
