"""Files we write take the process umask's mode, as the JSON beside them does (safetensors alone writes 0600)."""

import os
import stat

import pytest
import torch

from magvit2 import ARTransformer, Tokenizer
from magvit2.checkpoints import save_ar_pretrained
from magvit2.data.tokens import TokenShardWriter


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield 0o640
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_model_folders_follow_the_umask(tmp_path, umask_027):
    Tokenizer.from_preset("tiny").save_pretrained(tmp_path / "tok")
    save_ar_pretrained(ARTransformer.from_preset("tiny"), tmp_path / "tok")
    for name in ("model.safetensors", "config.json", "transformer.safetensors", "transformer.json"):
        assert _mode(tmp_path / "tok" / name) == umask_027, name


def test_token_shards_follow_the_umask(tmp_path, umask_027):
    writer = TokenShardWriter(tmp_path / "tokens", shard_size=2, meta={"format": "magvit2-tokens"})
    writer.add(torch.zeros(3, 2, 2, dtype=torch.int64), ["a", "b", "c"])
    writer.close()
    files = sorted((tmp_path / "tokens").iterdir())
    assert [f.name for f in files] == ["shard-00000.safetensors", "shard-00001.safetensors", "tokens.json"]
    assert all(_mode(f) == umask_027 for f in files)
