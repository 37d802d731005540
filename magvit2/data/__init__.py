"""Image files in, token shards out: the I/O behind `magvit2 reconstruct` and `magvit2 encode`.

Sits beside `nn` (it calls a Tokenizer) and below `cli`; AR training reads the token shards with `TokenShards`.
"""

from magvit2.data.images import (
    ImageFiles,
    ReconstructionResult,
    list_images,
    load_image,
    psnr_uint8,
    reconstruct_files,
    to_uint8,
)
from magvit2.data.tokens import EncodeSummary, TokenShards, TokenShardWriter, encode_folder

__all__ = [
    "EncodeSummary",
    "ImageFiles",
    "ReconstructionResult",
    "TokenShardWriter",
    "TokenShards",
    "encode_folder",
    "list_images",
    "load_image",
    "psnr_uint8",
    "reconstruct_files",
    "to_uint8",
]
