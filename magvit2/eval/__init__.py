"""Tokenizer evaluation: PSNR / SSIM / LPIPS / rFID and codebook usage, computed as the official evaluation does."""

from magvit2.eval.codebook import CodebookCounter, save_usage_histogram, usage_perplexity
from magvit2.eval.fid import FID_WEIGHTS_NAME, FeatureStats, InceptionV3FID, frechet_distance
from magvit2.eval.image_metrics import psnr, quantize_uint8, ssim
from magvit2.eval.tokenizer_eval import TokenizerMetrics, combined_indices, evaluate_tokenizer, write_report

__all__ = [
    "FID_WEIGHTS_NAME",
    "CodebookCounter",
    "FeatureStats",
    "InceptionV3FID",
    "TokenizerMetrics",
    "combined_indices",
    "evaluate_tokenizer",
    "frechet_distance",
    "psnr",
    "quantize_uint8",
    "save_usage_histogram",
    "ssim",
    "usage_perplexity",
    "write_report",
]
