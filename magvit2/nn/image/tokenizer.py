"""The Open-MAGVIT2 image tokenizer: encoder -> LFQ -> decoder, checkpoint-compatible with the official release.

`Tokenizer.state_dict()` holds exactly the official `encoder.*` / `decoder.*` keys and shapes (the LFQ has none):
339 tensors for open-magvit2-256-L, 283 for open-magvit2-128-L. Our own format is a directory with `config.json`
(the TokenizerConfig fields) and `model.safetensors` (`save_pretrained` / `from_pretrained`).
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import nn

from magvit2.nn.checks import check_config_floats, check_config_ints, check_values
from magvit2.nn.image.decoder import Decoder
from magvit2.nn.image.encoder import Encoder
from magvit2.nn.quantizer import LFQ, Indices, LFQOutput
from magvit2.nn.weights import CheckpointError, build_module, load_safetensors, read_format_json, write_format_dir

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT_NAME = "magvit2-tokenizer"
FORMAT_VERSION = 1
RANGE_TOLERANCE = 1e-3  # inputs are x / 127.5 - 1; anything past this is a scaling mistake, not rounding


# Upper bounds of the architecture fields, far above every released model (ch 128, ch_mult up to 4, 4 blocks,
# z_channels 18): a mistyped value (z_channels: 1e12) is an error naming the field, not a huge allocation or a hang.
# z_channels <= 32: the LFQ entropy runs over all 2^z_channels codes (tiled past 2^20, ops.lfq_entropy), int64 indices.
MAX_WIDTH = 8192  # ch * ch_mult[i]
ARCH_BOUNDS = {"ch": (1, 4096), "num_res_blocks": (1, 64), "z_channels": (1, 32), "in_channels": (1, 64),
               "out_ch": (1, 64), "resolution": (1, 2**16), "codebook_size": (2, 2**32)}  # fmt: skip
FLOAT_FIELDS = ("entropy_weight", "commitment_weight", "inv_temperature", "sample_minimization_weight",
                "batch_maximization_weight", "log_eps")  # fmt: skip


@dataclass
class TokenizerConfig:
    """Architecture (official ddconfig names) and quantizer settings. Defaults = open-magvit2-256-L."""

    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 4
    z_channels: int = 18
    in_channels: int = 3
    out_ch: int = 3
    resolution: int = 128  # accepted for ddconfig compatibility; unused (any multiple of the factor works)
    double_z: bool = False  # accepted for ddconfig compatibility; must be False
    codebook_size: int = 2**18
    entropy_weight: float = 0.1
    commitment_weight: float = 0.25
    inv_temperature: float = 100.0
    sample_minimization_weight: float = 1.0
    batch_maximization_weight: float = 1.0
    log_eps: float = 1e-5
    factorized_bits: tuple[int, ...] | None = None
    global_entropy: bool = False
    force_fp32: bool = True

    def __post_init__(self) -> None:
        check_config_ints(self, ARCH_BOUNDS)
        check_config_floats(self, FLOAT_FIELDS)
        if not isinstance(self.ch_mult, (list, tuple)) or not all(isinstance(m, int) for m in self.ch_mult):
            raise ValueError(f"{type(self).__name__}.ch_mult must be a list of ints, got {self.ch_mult!r}")
        self.ch_mult = tuple(self.ch_mult)
        if self.factorized_bits is not None:
            self.factorized_bits = tuple(int(b) for b in self.factorized_bits)
        if not 1 <= len(self.ch_mult) <= 8 or min(self.ch_mult) < 1 or self.ch * max(self.ch_mult) > MAX_WIDTH:
            raise ValueError(
                f"{type(self).__name__}.ch_mult must be 1 to 8 positive ints with ch * ch_mult[i] <= {MAX_WIDTH}, "
                f"got {self.ch_mult}"
            )
        bad = sorted({self.ch * m for m in self.ch_mult if (self.ch * m) % 32} | ({self.ch} if self.ch % 32 else set()))
        if bad:
            raise ValueError(
                f"{type(self).__name__}: every width ch * ch_mult[i] must be divisible by 32 (GroupNorm), got {bad}"
            )
        if self.num_res_blocks < 1:
            raise ValueError(f"{type(self).__name__}: num_res_blocks must be >= 1, got {self.num_res_blocks}")
        if self.double_z:
            raise ValueError(f"{type(self).__name__}: double_z=True is not supported (LFQ latents are not Gaussian)")
        if 2**self.z_channels != self.codebook_size:
            raise ValueError(
                f"{type(self).__name__}: codebook_size ({self.codebook_size}) must equal 2^z_channels = "
                f"{2**self.z_channels}"
            )

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["ch_mult"] = list(self.ch_mult)
        d["factorized_bits"] = None if self.factorized_bits is None else list(self.factorized_bits)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TokenizerConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown field(s) {unknown}; known: {sorted(names)}")
        return cls(**d)

    @classmethod
    def presets(cls) -> dict[str, TokenizerConfig]:
        return PRESETS

    @classmethod
    def from_section(cls, section: dict[str, Any]) -> TokenizerConfig:
        """A run config's `model` section: an optional "preset" (a presets() name) plus field overrides; YAML lists
        of the tuple fields become tuples."""
        fields = {k: tuple(v) if isinstance(v, list) else v for k, v in section.items()}
        preset = fields.pop("preset", None)
        return dataclasses.replace(cls.presets()[preset] if preset else cls(), **fields)


PRESETS: dict[str, TokenizerConfig] = {
    # configs/Open-MAGVIT2/gpu/imagenet_lfqgan_256_L.yaml: f = 16, 256 x 256 -> 16 x 16 tokens
    "open-magvit2-256-L": TokenizerConfig(),
    # imagenet_lfqgan_128_L.yaml: f = 8, 128 x 128 -> 16 x 16 tokens (256 x 256 -> 32 x 32)
    "open-magvit2-128-L": TokenizerConfig(ch_mult=(1, 2, 2, 4)),
    # for tests and examples: f = 4, 0.59 M parameters
    "tiny": TokenizerConfig(ch=32, ch_mult=(1, 1, 2), num_res_blocks=1),
}


class TokenizerEncoding(NamedTuple):
    quantized: torch.Tensor  # (B, z_channels, h, w), +-1, straight-through
    indices: Indices  # (B, h, w) int64, or a (pre, post, ...) tuple when factorized


class TokenizerOutput(NamedTuple):
    reconstruction: torch.Tensor  # (B, out_ch, H, W), not clamped
    lfq: LFQOutput


class Tokenizer(nn.Module):
    """Encoder + LFQ + decoder. Images are (B, 3, H, W) in [-1, 1], H and W multiples of `downsample_factor`.

    Example:
        >>> model = Tokenizer.from_preset("tiny").eval()
        >>> quantized, indices = model.encode(torch.rand(2, 3, 32, 32) * 2 - 1)
        >>> indices.shape, model.decode_indices(indices).shape
        (torch.Size([2, 8, 8]), torch.Size([2, 3, 32, 32]))
    """

    # What a subclass for another medium replaces (magvit2.nn.video.VideoTokenizer): its config class, the
    # encoder/decoder classes, the input's dimensions after (B, C), what the inputs are called in messages, and the
    # name of our directory format.
    config_class: type[TokenizerConfig] = TokenizerConfig
    encoder_class: type[nn.Module] = Encoder
    decoder_class: type[nn.Module] = Decoder
    grid_dims: tuple[str, ...] = ("H", "W")
    inputs_name = "images"
    format_name = FORMAT_NAME

    def __init__(self, config: TokenizerConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or self.config_class()
        if not isinstance(config, self.config_class):
            raise ValueError(f"{type(self).__name__}: config must be a {self.config_class.__name__}, got {config!r}")
        arch = dict(ch=config.ch, ch_mult=config.ch_mult, num_res_blocks=config.num_res_blocks)
        self.encoder = self.encoder_class(**arch, z_channels=config.z_channels, in_channels=config.in_channels)
        self.decoder = self.decoder_class(**arch, z_channels=config.z_channels, out_ch=config.out_ch)
        self.quantizer = LFQ(
            dim=config.z_channels,
            codebook_size=config.codebook_size,
            entropy_weight=config.entropy_weight,
            commitment_weight=config.commitment_weight,
            inv_temperature=config.inv_temperature,
            sample_minimization_weight=config.sample_minimization_weight,
            batch_maximization_weight=config.batch_maximization_weight,
            log_eps=config.log_eps,
            factorized_bits=config.factorized_bits,
            global_entropy=config.global_entropy,
            force_fp32=config.force_fp32,
        )

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> Tokenizer:
        """ "open-magvit2-256-L", "open-magvit2-128-L" or "tiny"; keyword overrides replace config fields
        (e.g. `factorized_bits=(6, 12)` for the AR models' token split). Weights are randomly initialised."""
        presets = cls.config_class.presets()
        if name not in presets:
            raise ValueError(f"unknown preset {name!r}; choose from {sorted(presets)}")
        return cls(dataclasses.replace(presets[name], **overrides))

    @property
    def downsample_factor(self) -> int:
        return self.config.downsample_factor

    # --- checks -----------------------------------------------------------------------------------------------------

    def _check_grid(self, x: torch.Tensor) -> None:
        """The spatial sizes: positive multiples of the downsampling factor (a subclass adds its own dimensions)."""
        f = self.downsample_factor
        h, w = x.shape[-2:]
        if h % f or w % f or h == 0 or w == 0:
            raise ValueError(
                f"{type(self).__name__}: {self.inputs_name[:-1]} size {h}x{w} is not a positive multiple of the "
                f"downsampling factor {f} (crop or resize to e.g. {max(f, h // f * f)}x{max(f, w // f * f)})"
            )

    def _check_images(self, x: torch.Tensor) -> None:
        c, name, dims = self.config.in_channels, type(self).__name__, ", ".join(self.grid_dims)
        if not isinstance(x, torch.Tensor) or x.dim() != 2 + len(self.grid_dims) or not x.is_floating_point():
            raise ValueError(f"{name}: expected float {self.inputs_name} (B, {c}, {dims}), got {_describe(x)}")
        if x.shape[1] != c:
            raise ValueError(f"{name}: expected {c} input channels (B, {c}, {dims}), got shape {tuple(x.shape)}")
        self._check_grid(x)
        if not check_values(x):  # value checks: on CPU, or with the debug switch (a host sync on a GPU)
            return
        lo, hi = (v.item() for v in torch.aminmax(x.detach()))
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError(f"{name}: input {self.inputs_name} contain NaN or infinite values")
        if lo < -1 - RANGE_TOLERANCE or hi > 1 + RANGE_TOLERANCE:
            warnings.warn(
                f"{name}: input values span [{lo:.4g}, {hi:.4g}], outside the expected [-1, 1] "
                f"({self.inputs_name} scaled as pixel / 127.5 - 1); reconstructions will be poor",
                stacklevel=3,
            )

    def _check_latents(self, q: torch.Tensor) -> None:
        z, name = self.config.z_channels, type(self).__name__
        dims = ", ".join(d.lower() for d in self.grid_dims)
        if not isinstance(q, torch.Tensor) or q.dim() != 2 + len(self.grid_dims) or not q.is_floating_point():
            raise ValueError(f"{name}.decode: expected float latents (B, {z}, {dims}), got {_describe(q)}")
        if q.shape[1] != z:
            raise ValueError(f"{name}.decode: expected {z} latent channels (B, {z}, {dims}), got {tuple(q.shape)}")
        if q[0, 0].numel() < 2:
            grid = "x".join(str(n) for n in q.shape[2:])
            raise ValueError(
                f"{name}.decode: a token grid of {grid} is too small: the decoder's adaptive "
                "norm takes the unbiased variance over the grid, which needs at least 2 tokens"
            )

    # --- API --------------------------------------------------------------------------------------------------------

    def encode(self, x: torch.Tensor) -> TokenizerEncoding:
        """(B, 3, H, W) in [-1, 1] -> quantized (B, 18, H/f, W/f) and indices (B, H/f, W/f). No losses."""
        self._check_images(x)
        return TokenizerEncoding(*self.quantizer.quantize(self.encoder(x)))

    def decode(self, quantized: torch.Tensor) -> torch.Tensor:
        """(B, 18, h, w) -> (B, 3, f*h, f*w), not clamped (clamp to [-1, 1] for display and metrics)."""
        self._check_latents(quantized)
        return self.decoder(quantized)

    def decode_indices(self, indices: Indices) -> torch.Tensor:
        """(B, h, w) int indices (a tuple of group indices when factorized) -> (B, 3, f*h, f*w)."""
        groups = indices if isinstance(indices, (tuple, list)) else (indices,)
        if any(not isinstance(g, torch.Tensor) or g.dim() != 1 + len(self.grid_dims) for g in groups):
            dims = ", ".join(d.lower() for d in self.grid_dims)
            raise ValueError(
                f"{type(self).__name__}.decode_indices: expected (B, {dims}) index tensors, got {_describe(indices)}"
            )
        dtype = self.decoder.conv_in.weight.dtype
        return self.decode(self.quantizer.indices_to_codes(indices, dtype=dtype))

    def forward(self, x: torch.Tensor) -> TokenizerOutput:
        """Reconstruction and the LFQ result (losses in train mode)."""
        self._check_images(x)
        lfq = self.quantizer(self.encoder(x))
        return TokenizerOutput(self.decoder(lfq.quantized), lfq)

    # --- our format -------------------------------------------------------------------------------------------------

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write `config.json` and `model.safetensors` (float tensors as they are; contiguous copies)."""
        meta = {"format": self.format_name, "format_version": FORMAT_VERSION, **self.config.to_dict()}
        write_format_dir(directory, CONFIG_NAME, WEIGHTS_NAME, meta, self)

    @classmethod
    def from_pretrained(
        cls, directory: str | os.PathLike, *, device: str | torch.device = "cpu", allow_nonfinite: bool = False
    ) -> Tokenizer:
        """Load a directory written by `save_pretrained` (or `magvit2 convert`). Errors name the bad file or key;
        NaN/inf weights are refused unless `allow_nonfinite`."""
        directory = os.fspath(directory)
        path = os.path.join(directory, CONFIG_NAME)
        meta = read_format_json(
            path, cls.format_name, FORMAT_VERSION, f"a model directory holds {CONFIG_NAME} and {WEIGHTS_NAME}"
        )
        try:
            config = cls.config_class.from_dict(meta)
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{path}: {e}") from None
        weights = os.path.join(directory, WEIGHTS_NAME)
        sd = load_safetensors(weights)
        return build_module(lambda: cls(config), sd, weights, device, allow_nonfinite=allow_nonfinite)


def _describe(x: object) -> str:
    if isinstance(x, torch.Tensor):
        return f"a {x.dtype} tensor of shape {tuple(x.shape)}"
    if isinstance(x, (tuple, list)):
        return f"a {type(x).__name__} of {[_describe(v) for v in x]}"
    return type(x).__name__
