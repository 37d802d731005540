"""Tokenizer evaluation: PSNR / SSIM / LPIPS / rFID and codebook usage, computed as the official evaluation does."""

from magvit2.eval.fid import FID_WEIGHTS_NAME, FeatureStats, InceptionV3FID, frechet_distance
from magvit2.eval.image_metrics import psnr, quantize_uint8, ssim

__all__ = ["FID_WEIGHTS_NAME", "FeatureStats", "InceptionV3FID", "frechet_distance", "psnr", "quantize_uint8", "ssim"]
