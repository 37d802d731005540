"""Official Open-MAGVIT2 checkpoints for the video tokenizer. Reading a video `.ckpt` is `load_checkpoint`'s (the
tokenizer checkpoints share one layout: magvit2/checkpoints/image.py); this adds the initialisation of a video
tokenizer by inflating an image checkpoint (the official `image_pretrain_path`)."""

from __future__ import annotations

import os

import torch

from magvit2.checkpoints.image import load_official, load_pretrained_dir
from magvit2.nn.video.tokenizer import VideoTokenizer
from magvit2.nn.weights import CheckpointError


def inflate_from_checkpoint(model: VideoTokenizer, path: str | os.PathLike, *, use_ema: bool = True) -> VideoTokenizer:
    """`model.inflate_from_image` with the tokenizer weights of an image checkpoint (official Lightning `.ckpt`, an
    AR checkpoint's first stage, or our format): the EMA weights when the file has them and `use_ema`. Returns
    `model`. Errors name the file and the key."""
    path = os.fspath(path)
    if os.path.isdir(path):
        image_sd = load_pretrained_dir(path).state_dict()
    else:
        image_sd = load_official(path, use_ema=use_ema).state_dict
    if any(k.endswith(".conv_1.weight") for k in image_sd):
        raise CheckpointError(f"{path} holds a video tokenizer, not an image one: nothing to inflate")
    try:
        return model.inflate_from_image({k: v for k, v in image_sd.items() if isinstance(v, torch.Tensor)})
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from None
