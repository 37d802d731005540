"""Data only, no model call: image files -> tensors (`images`, `datasets`), video files -> clips (`video`), token
shards and the packing of group indices (`tokens`). Models run over files in magvit2/pipelines."""

from magvit2.data.datasets import CenterCropFolder, ImageFiles, LabeledCropFolder, RandomCropFolder, ReadableBatches
from magvit2.data.images import (
    contact_sheet,
    list_images,
    load_image,
    scan_images,
    to_uint8,
    uint8_levels,
    usable_images,
)
from magvit2.data.tokens import TokenShards, TokenShardWriter, pack_groups, unpack_groups
from magvit2.data.video import VideoClips, list_videos, read_frames, write_video

__all__ = [
    "CenterCropFolder",
    "ImageFiles",
    "LabeledCropFolder",
    "RandomCropFolder",
    "ReadableBatches",
    "TokenShardWriter",
    "TokenShards",
    "VideoClips",
    "contact_sheet",
    "list_images",
    "list_videos",
    "load_image",
    "pack_groups",
    "read_frames",
    "scan_images",
    "to_uint8",
    "uint8_levels",
    "unpack_groups",
    "usable_images",
    "write_video",
]
