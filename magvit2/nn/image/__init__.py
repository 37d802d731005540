"""The Open-MAGVIT2 image tokenizer: encoder, decoder, their blocks, the tokenizer and the PatchGAN discriminator."""

from magvit2.nn.image.blocks import AdaptiveGroupNorm, ResBlock, Upsampler, depth_to_space
from magvit2.nn.image.decoder import Decoder
from magvit2.nn.image.discriminator import PatchDiscriminator
from magvit2.nn.image.encoder import Encoder
from magvit2.nn.image.tokenizer import PRESETS, Tokenizer, TokenizerConfig, TokenizerEncoding, TokenizerOutput

__all__ = [
    "PRESETS",
    "AdaptiveGroupNorm",
    "Decoder",
    "Encoder",
    "PatchDiscriminator",
    "ResBlock",
    "Tokenizer",
    "TokenizerConfig",
    "TokenizerEncoding",
    "TokenizerOutput",
    "Upsampler",
    "depth_to_space",
]
