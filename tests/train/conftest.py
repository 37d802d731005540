"""Shared training-test data: a two-class image folder, its tiny tokenizer and its token shards."""

import pytest
import torch

from magvit2.cli import main
from magvit2.demos.photos_data import load_photo
from magvit2.nn import Tokenizer


@pytest.fixture(scope="session")
def tokens(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("ar-data")
    tok_dir = root / "tokenizer"
    torch.manual_seed(0)
    Tokenizer.from_preset("tiny").save_pretrained(tok_dir)
    for label, names in (("cat", ("chelsea", "coffee")), ("rocket", ("rocket", "astronaut"))):
        (root / "images" / label).mkdir(parents=True)
        for name in names:
            photo = load_photo(name, shorter_side=64)
            for i in range(4):
                crop = photo[i * 8 : i * 8 + 32, i * 10 : i * 10 + 32]
                Image.fromarray(crop).save(root / "images" / label / f"{name}{i}.png")
    args = ["encode", "--model", str(tok_dir), "--data", str(root / "images"), "--out", str(root / "tokens")]
    assert main([*args, "--size", "32", "--no-progress"]) == 0
    return root
