"""Tokenizer evaluation: PSNR / SSIM / LPIPS / rFID and codebook usage, computed as the official evaluation does."""

from magvit2.eval.image_metrics import psnr, quantize_uint8, ssim

__all__ = ["psnr", "quantize_uint8", "ssim"]
