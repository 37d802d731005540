"""Every loader of files refuses a pickle whose payload would run code, and the payload never runs."""

import pickle

import pytest
import torch

from magvit2.checkpoints import load_ar_checkpoint, load_checkpoint
from magvit2.eval.inception import InceptionV3FID
from magvit2.nn import LPIPS
from magvit2.train.common.io import AtomicCheckpointIO


class Payload:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


LOADERS = {
    "load_checkpoint": lambda p: load_checkpoint(p),
    "load_ar_checkpoint": lambda p: load_ar_checkpoint(p),
    "LPIPS backbone": lambda p: LPIPS(backbone=p, heads=None, random_backbone=True),
    "LPIPS heads": lambda p: LPIPS(backbone=None, heads=p, random_backbone=True),
    "InceptionV3FID.from_file": lambda p: InceptionV3FID.from_file(p),
    "resume (trainer checkpoint IO)": lambda p: AtomicCheckpointIO().load_checkpoint(p),
}


@pytest.mark.parametrize("how", ["torch.save", "plain pickle"])
@pytest.mark.parametrize("loader", list(LOADERS))
def test_payload_is_refused_and_never_runs(tmp_path, loader, how):
    marker = tmp_path / "pwned"
    obj = {"state_dict": {"w": torch.zeros(2)}, "extra": Payload(str(marker))}
    path = tmp_path / "evil.ckpt"
    if how == "torch.save":
        torch.save(obj, path)
    else:
        path.write_bytes(pickle.dumps(obj))
    with pytest.raises(ValueError, match=r"refusing to load|cannot read"):
        LOADERS[loader](path)
    assert not marker.exists()
