"""The Open-MAGVIT2 video tokenizer: causal 3D encoder -> LFQ -> 3D decoder (official `video_lfqgan.VQModel`).

Clips are (B, 3, T, H, W) in [-1, 1] with T - 1 a multiple of the temporal factor (17 frames -> 5 latent frames for
the released model) and H, W multiples of the spatial factor. Tokens are LSB-first indices over (B, t, h, w); the LFQ
and its exact entropy are the image tokenizer's, over every token of the batch. `state_dict()` holds exactly the
official `encoder.*` / `decoder.*` keys and shapes; our own format is a directory like the image tokenizer's with
"format": "magvit2-video-tokenizer".
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from magvit2.nn.image.tokenizer import Tokenizer, TokenizerConfig
from magvit2.nn.video.decoder import VideoDecoder
from magvit2.nn.video.encoder import VideoEncoder

VIDEO_FORMAT_NAME = "magvit2-video-tokenizer"


@dataclass
class VideoTokenizerConfig(TokenizerConfig):
    """The image config's fields (official ddconfig names and the LFQ settings). Defaults = open-magvit2-video-128-L
    (configs/Open-MAGVIT2/gpu/ucf101_lfqfan_128_L.yaml): ch 128, ch_mult (1, 2, 2, 4), 4 res blocks, z 18."""

    ch_mult: tuple[int, ...] = (1, 2, 2, 4)

    @classmethod
    def presets(cls) -> dict[str, TokenizerConfig]:
        return VIDEO_PRESETS

    @property
    def temporal_factor(self) -> int:
        """Frames per latent frame after the first: 2 per level below the top whose multiplier is not 1."""
        return 2 ** sum(1 for m in self.ch_mult[:-1] if m != 1)

    def latent_frames(self, frames: int) -> int:
        """Latent frames of a clip of `frames` frames (1 + (frames - 1) / temporal_factor)."""
        return 1 + (frames - 1) // self.temporal_factor


VIDEO_PRESETS: dict[str, TokenizerConfig] = {
    # 17 x 128 x 128 -> 5 x 16 x 16 tokens, 2^18 codes (video_128_262144.ckpt)
    "open-magvit2-video-128-L": VideoTokenizerConfig(),
    # for tests and examples: 5 x 16 x 16 -> 3 x 4 x 4 tokens
    "tiny": VideoTokenizerConfig(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1),
}


class VideoTokenizer(Tokenizer):
    """Encoder + LFQ + decoder over clips (B, 3, T, H, W) in [-1, 1]; `encode`, `decode`, `decode_indices`,
    `forward`, `save_pretrained` / `from_pretrained` as the image `Tokenizer`.

    Example:
        >>> model = VideoTokenizer.from_preset("tiny").eval()
        >>> quantized, indices = model.encode(torch.rand(1, 3, 5, 16, 16) * 2 - 1)
        >>> indices.shape, model.decode_indices(indices).shape
        (torch.Size([1, 3, 4, 4]), torch.Size([1, 3, 5, 16, 16]))
    """

    config_class = VideoTokenizerConfig
    encoder_class = VideoEncoder
    decoder_class = VideoDecoder
    grid_dims = ("T", "H", "W")
    inputs_name = "videos"
    format_name = VIDEO_FORMAT_NAME

    def __init__(self, config: VideoTokenizerConfig | None = None) -> None:
        super().__init__(config)

    @property
    def temporal_factor(self) -> int:
        return self.config.temporal_factor

    @torch.no_grad()
    def inflate_from_image(self, source: nn.Module | Mapping[str, torch.Tensor]) -> VideoTokenizer:
        """Initialise the encoder and decoder from an image tokenizer of the same widths (official
        `inflate_from_image`, MAGVIT-v2's "last-frame" inflation): `source` is an image `Tokenizer` or its state dict
        (`encoder.*` / `decoder.*`; official .ckpt files: magvit2.checkpoints.video.inflate_from_checkpoint).
        Each video weight takes the image weight of its name without `.conv_1` (`inflate_state_dict`). Returns self.
        """
        image_sd = source.state_dict() if isinstance(source, nn.Module) else source
        own = {k: v for k, v in self.state_dict().items() if k.startswith(("encoder.", "decoder."))}
        self.load_state_dict(inflate_state_dict(image_sd, own), strict=False)
        return self

    def _check_grid(self, x: torch.Tensor) -> None:
        super()._check_grid(x)
        t, f = x.shape[2], self.temporal_factor
        if t < 1 or (t - 1) % f:
            fit = 1 + max(0, t - 1) // f * f
            raise ValueError(
                f"VideoTokenizer: {t} frames do not fit the temporal factor {f}: frames - 1 must be a multiple of {f} "
                f"(the causal encoder maps 1 + {f} n frames to 1 + n), e.g. {fit}"
            )


def video_config_of(config: TokenizerConfig) -> VideoTokenizerConfig:
    """The video config with the same fields as `config` (an image config, e.g. of the model inflated from)."""
    return VideoTokenizerConfig(**dataclasses.asdict(config))


def inflate_state_dict(
    image_sd: Mapping[str, torch.Tensor], video_sd: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Video weights for every key of `video_sd` (used for its shapes and dtypes) from the image weights of the same
    name without `.conv_1`, by the official rule:
    - equal shapes (norms, AdaGN linears, biases of convs of equal width): copied;
    - a 2D kernel (O, I, kh, kw) for a 3D kernel (O, I, kt, kh, kw): written into the temporally last slice, zeros
      elsewhere (a causal conv then sees the current frame only: each frame is tokenized as an image at first);
    - the temporal upsampler's conv (2x the image upsampler's output channels): the image weight (and bias) repeated
      twice along the output channels, the weight into the last temporal slice, so both frames of a pair start as
      the image upsampler's output.
    A missing image key or any other shape is a ValueError naming the key."""
    out: dict[str, torch.Tensor] = {}
    for key, target in video_sd.items():
        name = key.replace(".conv_1.", ".")
        if name not in image_sd:
            raise ValueError(f"inflate: the image weights lack {name} (for {key}); widths must match the video model")
        src = image_sd[name].detach().to(target.dtype)
        if src.shape == target.shape:
            out[key] = src.clone()
            continue
        if src.dim() == 1 and target.dim() == 1 and target.shape[0] == 2 * src.shape[0]:
            out[key] = src.repeat(2)
            continue
        if src.dim() == 4 and target.dim() == 5 and src.shape[1:] == target.shape[1:2] + target.shape[3:]:
            reps = target.shape[0] // src.shape[0]
            if reps in (1, 2) and reps * src.shape[0] == target.shape[0]:
                w = torch.zeros(target.shape, dtype=target.dtype, device=src.device)
                w[:, :, -1] = src.repeat(reps, 1, 1, 1)
                out[key] = w
                continue
        raise ValueError(f"inflate: {name} {tuple(src.shape)} does not fit {key} {tuple(target.shape)}")
    return out
