"""Token shards against the AR model and the tokenizer that wrote them: the grid must be the model's block, the
classes within class_num, and the tokenizer found (stored absolute, checked by its config hash) or named."""

import json
import shutil

import pytest
import torch

from magvit2.cli import main
from magvit2.data.tokens import TokenShards, TokenShardWriter
from magvit2.nn import Tokenizer
from magvit2.train.ar.fit import tokenizer_of_shards

TRAIN = ["train", "ar", "--config", "ar-tiny", "--max-steps", "1", "--no-progress", "--set", "data.batch_size=4"]


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("magvit2 train: error: ")
    return err


def test_a_grid_that_is_not_the_block_size_is_refused(tokens, tmp_path, capsys):
    argv = ["encode", "--model", str(tokens / "tokenizer"), "--data", str(tokens / "images"), "--out",
            str(tmp_path / "t16"), "--size", "16", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    capsys.readouterr()
    assert main([*TRAIN, "--data", str(tmp_path / "t16"), "--out", str(tmp_path / "run")]) == 2
    err = _one_line_error(capsys)  # before: the 4x4 grids trained on the 64-token model
    assert "t16/tokens.json: grid 4x4 is 16 tokens per image, the model's block_size is 64" in err


def test_more_classes_than_class_num_are_refused(tokens, tmp_path, capsys):
    shards = TokenShards(tokens / "tokens")
    meta = {k: v for k, v in shards.meta.items() if k not in ("shards", "num_images", "class_names")}
    writer = TokenShardWriter(tmp_path / "t11", shard_size=16, meta=meta)
    writer.add(shards.load_all()[:11], [f"class{i:02d}/x.png" for i in range(11)])
    writer.close()
    assert main([*TRAIN, "--data", str(tmp_path / "t11"), "--out", str(tmp_path / "run")]) == 2
    assert "the data has 11 classes (folders) but model.class_num is 10" in _one_line_error(capsys)


@pytest.fixture
def relative(tokens, tmp_path, monkeypatch, capsys):
    """Shards encoded from tmp_path with the tokenizer typed as the relative path `tok`."""
    shutil.copytree(tokens / "tokenizer", tmp_path / "tok")
    monkeypatch.chdir(tmp_path)
    argv = ["encode", "--model", "tok", "--data", str(tokens / "images"), "--out", "tokens", "--size", "32"]
    assert main([*argv, "--no-progress"]) == 0
    (tmp_path / "elsewhere").mkdir()
    capsys.readouterr()
    return tmp_path


def test_the_tokenizer_is_stored_absolute_and_found_from_another_directory(relative, monkeypatch):
    index = json.loads((relative / "tokens" / "tokens.json").read_text())
    assert index["model"] == str(relative / "tok")
    monkeypatch.chdir(relative / "elsewhere")
    tokenizer = tokenizer_of_shards(relative / "tokens", (6, 12))  # before: None, the run kept no tokenizer
    assert tokenizer is not None and tokenizer.config.factorized_bits == (6, 12)


def test_a_moved_tokenizer_is_named_and_can_be_pointed_at(relative, capsys):
    (relative / "tok").rename(relative / "moved")
    base = [*TRAIN, "--data", str(relative / "tokens")]
    assert main([*base, "--out", str(relative / "run")]) == 2
    err = _one_line_error(capsys)
    assert f"{relative / 'tok'} not found (moved?)" in err and "--tokenizer PATH" in err
    assert main([*base, "--tokenizer", str(relative / "moved"), "--out", str(relative / "run")]) == 0
    ckpt = torch.load(relative / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert any(k.startswith("first_stage_model.") for k in ckpt["state_dict"])
    torch.manual_seed(1)
    Tokenizer.from_preset("tiny", num_res_blocks=2).save_pretrained(relative / "other")
    assert main([*base, "--tokenizer", str(relative / "other"), "--out", str(relative / "run2")]) == 2
    assert "is not the one that encoded" in _one_line_error(capsys)


def test_older_indexes_without_a_hash_keep_working(relative, monkeypatch):
    path = relative / "tokens" / "tokens.json"
    index = json.loads(path.read_text())
    del index["model_config_sha256"]
    path.write_text(json.dumps({**index, "model": "tok"}))  # as typed, relative to where encode ran
    assert tokenizer_of_shards(relative / "tokens", (6, 12)) is not None  # from there: found
    monkeypatch.chdir(relative / "elsewhere")
    with pytest.raises(FileNotFoundError, match="tokenizer recorded in .* tok not found"):
        tokenizer_of_shards(relative / "tokens", (6, 12))
    index["model_config"]["num_res_blocks"] = 2  # another tokenizer's config: refused
    path.write_text(json.dumps({**index, "model": str(relative / "tok")}))
    with pytest.raises(ValueError, match="is not the one that encoded"):
        tokenizer_of_shards(relative / "tokens", (6, 12))
