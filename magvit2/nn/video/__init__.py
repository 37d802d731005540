"""The Open-MAGVIT2 video tokenizer: causal 3D encoder and decoder on the image model's blocks, the tokenizer and the
3D PatchGAN discriminator."""

from magvit2.nn.video.blocks import CausalConv3d, Upsampler3D, depth_to_space3d
from magvit2.nn.video.decoder import VideoDecoder
from magvit2.nn.video.discriminator import PatchDiscriminator3D
from magvit2.nn.video.encoder import VideoEncoder
from magvit2.nn.video.tokenizer import VIDEO_PRESETS, VideoTokenizer, VideoTokenizerConfig

__all__ = [
    "VIDEO_PRESETS",
    "CausalConv3d",
    "PatchDiscriminator3D",
    "Upsampler3D",
    "VideoDecoder",
    "VideoEncoder",
    "VideoTokenizer",
    "VideoTokenizerConfig",
    "depth_to_space3d",
]
