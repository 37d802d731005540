"""`magvit2 encode` over a folder with unreadable files: each readable image is written once under its own name,
the others are skipped, counted and named (never replaced by a neighbour, never aborting the run)."""

import json

import pytest
import torch

from magvit2.cli import main
from magvit2.data import TokenShards, load_image
from magvit2.nn import Tokenizer
from tests.data.hostile import truncate, write_bad_headers, write_photos


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """data/: a, c, d readable; b, e truncated (their headers read); five hostile headers. And a tiny tokenizer."""
    root = tmp_path_factory.mktemp("encode-skip")
    write_photos(root / "data" / "cls", ["a.png", "b.png", "c.png", "d.png", "e.png"])
    truncate(root / "data" / "cls" / "b.png")
    truncate(root / "data" / "cls" / "e.png")
    write_bad_headers(root / "data" / "cls")
    torch.manual_seed(0)
    Tokenizer.from_preset("tiny").save_pretrained(root / "tokenizer")
    return root


def test_encode_skips_unreadable_files_and_writes_each_image_once(folder, tmp_path, capsys):
    out = tmp_path / "tokens"
    argv = ["encode", "--model", str(folder / "tokenizer"), "--data", str(folder / "data"), "--out", str(out),
            "--size", "32", "--batch-size", "4", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "encoded 3 images to 8x8 tokens in 1 shard(s)" in printed
    assert "encoded 3 images, 7 skipped (unreadable): " in printed and "cls/b.png: OSError" in printed
    tokens = TokenShards(out)
    assert tokens.sources == ["cls/a.png", "cls/c.png", "cls/d.png"]  # before: c/c.png twice (b replaced by c)
    model = Tokenizer.from_pretrained(folder / "tokenizer")
    for i, source in enumerate(tokens.sources):  # each grid is its own source's tokens
        with torch.no_grad():
            want = model.encode(load_image(folder / "data" / source, size=32, multiple_of=4)[None]).indices[0]
        assert torch.equal(tokens[i], want)
    index = json.loads((out / "tokens.json").read_text())
    assert index["num_images"] == 3 and len(index["skipped"]) == 7
    assert any(s.endswith("huge_text.png: ValueError: Decompressed data too large for PngImagePlugin.MAX_TEXT_CHUNK")
               for s in index["skipped"])  # fmt: skip


def test_encode_of_a_folder_with_nothing_readable_is_one_line(folder, tmp_path, capsys):
    write_bad_headers(tmp_path / "bad")
    argv = ["encode", "--model", str(folder / "tokenizer"), "--data", str(tmp_path / "bad"), "--out",
            str(tmp_path / "t"), "--size", "32", "--no-progress"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "none of the 5 image files" in err and "bad.tif" in err
    assert not (tmp_path / "t").exists()
