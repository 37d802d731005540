"""Official and foreign checkpoint formats -> our modules: tokenizers (`image`, also video ones; `video`: inflation of
an image checkpoint into a video tokenizer) and AR models (`ar`). Above `nn`: the
modules know no foreign format."""

from magvit2.checkpoints.ar import ARModel, load_ar_checkpoint, load_ar_model, load_ar_pretrained, save_ar_pretrained
from magvit2.checkpoints.image import infer_config, load_checkpoint, load_official, read_official
from magvit2.checkpoints.video import inflate_from_checkpoint
from magvit2.nn.weights import CheckpointError

__all__ = [
    "ARModel",
    "CheckpointError",
    "infer_config",
    "inflate_from_checkpoint",
    "load_ar_checkpoint",
    "load_ar_model",
    "load_ar_pretrained",
    "load_checkpoint",
    "load_official",
    "read_official",
    "save_ar_pretrained",
]
