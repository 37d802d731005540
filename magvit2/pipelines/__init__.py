"""Running models over files: encode (images -> token shards), reconstruct, sample, convert (checkpoint -> our
format). Called by the CLI and the demos; they need no trainer."""

from magvit2.pipelines.convert import Converted, convert_checkpoint
from magvit2.pipelines.encode import EncodeSummary, encode_folder
from magvit2.pipelines.reconstruct import ReconstructionResult, reconstruct_files
from magvit2.pipelines.sample import sample_images, write_samples

__all__ = [
    "Converted",
    "EncodeSummary",
    "ReconstructionResult",
    "convert_checkpoint",
    "encode_folder",
    "reconstruct_files",
    "sample_images",
    "write_samples",
]
