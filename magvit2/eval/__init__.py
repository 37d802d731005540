"""Metrics that stand alone (no trainer): image PSNR / SSIM, codebook usage, the shared Inception network, FID, and
a tokenizer's evaluation (PSNR / SSIM / LPIPS / rFID / utilization) as the official evaluation computes them."""

from magvit2.eval.codebook import CodebookCounter, save_usage_histogram, usage_perplexity
from magvit2.eval.fid import FeatureStats, frechet_distance
from magvit2.eval.image_metrics import psnr, quantize_uint8, ssim
from magvit2.eval.inception import FID_WEIGHTS_NAME, InceptionV3FID
from magvit2.eval.tokenizer_eval import TokenizerMetrics, evaluate_folder, evaluate_tokenizer, write_report

__all__ = [
    "FID_WEIGHTS_NAME",
    "CodebookCounter",
    "FeatureStats",
    "InceptionV3FID",
    "TokenizerMetrics",
    "evaluate_folder",
    "evaluate_tokenizer",
    "frechet_distance",
    "psnr",
    "quantize_uint8",
    "save_usage_histogram",
    "ssim",
    "usage_perplexity",
    "write_report",
]
