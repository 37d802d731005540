"""nn.Modules only: the LFQ quantizer, training losses (LPIPS, LeCAM, GAN terms), the image tokenizer (`image/`), the
video tokenizer (`video/`) and the AR transformer with its generation (`ar/`). Modules call `magvit2.ops` for the
kernels; they know no trainer and no foreign file format (official checkpoints: magvit2/checkpoints). Building
blocks: `magvit2.nn.image`, `magvit2.nn.video`."""

from magvit2.nn import checks
from magvit2.nn.ar import AR_PRESETS, ARConfig, ARLogits, ARTransformer, Generated, generate
from magvit2.nn.image import PRESETS, PatchDiscriminator, Tokenizer, TokenizerConfig, TokenizerEncoding, TokenizerOutput
from magvit2.nn.losses import LeCAM, LossConfig, TokenizerLoss
from magvit2.nn.lpips import LPIPS
from magvit2.nn.quantizer import LFQ, LFQOutput
from magvit2.nn.video import VIDEO_PRESETS, PatchDiscriminator3D, VideoTokenizer, VideoTokenizerConfig
from magvit2.nn.weights import CheckpointError, safe_torch_load

__all__ = [
    "AR_PRESETS",
    "ARConfig",
    "ARLogits",
    "ARTransformer",
    "CheckpointError",
    "Generated",
    "LFQ",
    "LFQOutput",
    "LPIPS",
    "LeCAM",
    "LossConfig",
    "PRESETS",
    "PatchDiscriminator",
    "PatchDiscriminator3D",
    "Tokenizer",
    "TokenizerConfig",
    "TokenizerEncoding",
    "TokenizerOutput",
    "TokenizerLoss",
    "VIDEO_PRESETS",
    "VideoTokenizer",
    "VideoTokenizerConfig",
    "checks",
    "generate",
    "safe_torch_load",
]
