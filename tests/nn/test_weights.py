"""safetensors files whose header lies about sizes are refused with a clear error by every loader of our format."""

import json
import struct

import pytest
import torch

from magvit2.checkpoints import load_ar_checkpoint
from magvit2.checkpoints.ar import save_ar_pretrained
from magvit2.nn import ARTransformer, Tokenizer
from magvit2.nn.weights import CheckpointError, load_safetensors


def _rewrite_header(path, edit):
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    edit(header)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n :])


def _first_tensor(header):
    return next(k for k in header if k != "__metadata__")


LIES = {
    "shape larger than its bytes": lambda h: h[_first_tensor(h)].update(
        shape=[s * 2 for s in h[_first_tensor(h)]["shape"]]
    ),
    "offsets past the end of the file": lambda h: h[_first_tensor(h)].update(
        data_offsets=[h[_first_tensor(h)]["data_offsets"][0], 1 << 40]
    ),
    "dtype wider than its bytes": lambda h: h[_first_tensor(h)].update(dtype="F64"),
}


@pytest.mark.parametrize("lie", list(LIES), ids=lambda s: s.replace(" ", "-"))
def test_lying_headers_are_refused(tmp_path, lie):
    tok_dir = tmp_path / "model"
    Tokenizer.from_preset("tiny").save_pretrained(tok_dir)
    save_ar_pretrained(ARTransformer.from_preset("tiny"), tok_dir)
    for name in ("model.safetensors", "transformer.safetensors"):
        _rewrite_header(tok_dir / name, LIES[lie])
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_safetensors(str(tok_dir / "model.safetensors"))
    with pytest.raises(CheckpointError, match="model.safetensors"):
        Tokenizer.from_pretrained(tok_dir)
    with pytest.raises(CheckpointError, match="safetensors"):
        load_ar_checkpoint(tok_dir)


def test_an_honest_rewrite_still_loads(tmp_path):
    Tokenizer.from_preset("tiny").save_pretrained(tmp_path)
    _rewrite_header(tmp_path / "model.safetensors", lambda h: None)
    assert isinstance(Tokenizer.from_pretrained(tmp_path), torch.nn.Module)
