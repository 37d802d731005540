"""nn.Modules: the LFQ quantizer, the Open-MAGVIT2 encoder/decoder and tokenizer, training losses (PatchGAN,
LPIPS, LeCAM), and checkpoint loading.

Modules here call `magvit2.ops` for the LFQ kernels and never import the compiled extension.
"""

from magvit2.nn.ar_checkpoint import load_ar_checkpoint
from magvit2.nn.blocks import AdaptiveGroupNorm, ResBlock, Upsampler, depth_to_space
from magvit2.nn.checkpoint import CheckpointError, infer_config, load_checkpoint, safe_torch_load
from magvit2.nn.decoder import Decoder
from magvit2.nn.discriminator import PatchDiscriminator
from magvit2.nn.encoder import Encoder
from magvit2.nn.losses import (
    LeCAM,
    LossConfig,
    TokenizerLoss,
    adaptive_generator_weight,
    hinge_d_loss,
    non_saturating_g_loss,
)
from magvit2.nn.lpips import LPIPS
from magvit2.nn.quantizer import LFQ, LFQOutput
from magvit2.nn.tokenizer import PRESETS, Tokenizer, TokenizerConfig, TokenizerEncoding, TokenizerOutput
from magvit2.nn.transformer import AR_PRESETS, ARConfig, ARLogits, ARTransformer

__all__ = [
    "AR_PRESETS",
    "ARConfig",
    "ARLogits",
    "ARTransformer",
    "load_ar_checkpoint",
    "LFQ",
    "LPIPS",
    "LeCAM",
    "LossConfig",
    "PatchDiscriminator",
    "TokenizerLoss",
    "adaptive_generator_weight",
    "hinge_d_loss",
    "non_saturating_g_loss",
    "PRESETS",
    "AdaptiveGroupNorm",
    "CheckpointError",
    "Decoder",
    "Encoder",
    "LFQOutput",
    "ResBlock",
    "Tokenizer",
    "TokenizerConfig",
    "TokenizerEncoding",
    "TokenizerOutput",
    "Upsampler",
    "depth_to_space",
    "infer_config",
    "load_checkpoint",
    "safe_torch_load",
]
