"""Bad training and evaluation input is one line naming what was wrong: step and image counts of 0 or below, and
--resume with a checkpoint of the other trainer or of another architecture (not Lightning's page of key errors)."""

import pytest

from magvit2.cli import main
from magvit2.eval import evaluate_folder
from magvit2.nn import Tokenizer


def _tokenizer_args(tokens, out, *extra):
    return ["train", "tokenizer", "--config", "tiny", "--data", str(tokens / "images"), "--out", str(out),
            "--no-progress", "--threads", "1", "--set", "data.size=32", "--set", "data.batch_size=4",
            "--set", "trainer.image_every_n_steps=0", *extra]  # fmt: skip


def _ar_args(tokens, out, *extra):
    return ["train", "ar", "--config", "ar-tiny", "--data", str(tokens / "tokens"), "--out", str(out),
            "--no-progress", "--threads", "1", "--set", "data.batch_size=4", *extra]  # fmt: skip


@pytest.mark.parametrize("what", ["tokenizer", "ar"])
@pytest.mark.parametrize("steps", ["0", "-1", "-5", "x"])
def test_max_steps_must_be_positive(tokens, tmp_path, capsys, what, steps):
    args = (_tokenizer_args if what == "tokenizer" else _ar_args)(tokens, tmp_path / "run", "--max-steps", steps)
    with pytest.raises(SystemExit) as done:
        main(args)
    assert done.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "argument --max-steps: expected a positive integer" in err
    assert not (tmp_path / "run").exists()  # nothing trained, nothing written


def test_max_steps_zero_in_the_config_is_an_error(tokens, tmp_path, capsys):
    assert main(_ar_args(tokens, tmp_path / "run", "--set", "trainer.max_steps=0")) == 2
    assert "trainer.max_steps must be a positive int, or -1 (no limit), got 0" in capsys.readouterr().err


@pytest.mark.parametrize("limit", ["0", "-1"])
def test_eval_limit_must_be_positive(tokens, tmp_path, capsys, limit):
    args = ["eval", "tokenizer", "--model", str(tokens / "tokenizer"), "--data", str(tokens / "images"),
            "--out", str(tmp_path / "eval"), "--limit", limit, "--size", "32", "--no-progress"]  # fmt: skip
    with pytest.raises(SystemExit) as done:
        main(args)
    assert done.value.code == 2
    assert "argument --limit: expected a positive integer" in capsys.readouterr().err
    with pytest.raises(ValueError, match=f"limit must be a positive int or None .all images., got {limit}"):
        evaluate_folder(Tokenizer.from_preset("tiny"), tokens / "images", size=32, limit=int(limit), progress=False)


@pytest.fixture(scope="module")
def checkpoints(tokens, tmp_path_factory):
    root = tmp_path_factory.mktemp("resume-kinds")
    assert main(_tokenizer_args(tokens, root / "tok", "--max-steps", "1")) == 0
    assert main(_ar_args(tokens, root / "ar", "--max-steps", "1")) == 0
    return root / "tok" / "checkpoints" / "last.ckpt", root / "ar" / "checkpoints" / "last.ckpt"


def _one_line_error(capsys):
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.startswith("magvit2 train: error:")]


def test_resume_from_the_other_trainer_is_one_line(tokens, tmp_path, capsys, checkpoints):
    tok, ar = checkpoints
    assert main(_ar_args(tokens, tmp_path / "a", "--max-steps", "2", "--resume", str(tok))) == 2
    assert _one_line_error(capsys) == [
        f"magvit2 train: error: --resume {tok}: a checkpoint of `magvit2 train tokenizer`, this is `magvit2 train ar`"
    ]
    assert main(_tokenizer_args(tokens, tmp_path / "b", "--max-steps", "2", "--resume", str(ar))) == 2
    assert "a checkpoint of `magvit2 train ar`, this is `magvit2 train tokenizer`" in _one_line_error(capsys)[0]


def test_resume_with_another_architecture_is_one_line(tokens, tmp_path, capsys, checkpoints):
    tok, ar = checkpoints
    args = _tokenizer_args(tokens, tmp_path / "a", "--max-steps", "2", "--resume", str(tok), "--set", "model.ch=64")
    assert main(args) == 2
    (line,) = _one_line_error(capsys)
    assert "has shape" in line and "in this model: the config's model section differs" in line
    args = _ar_args(tokens, tmp_path / "b", "--max-steps", "2", "--resume", str(ar), "--set", "model.spatial_n_layer=3")
    assert main(args) == 2
    (line,) = _one_line_error(capsys)
    assert "not a checkpoint of this model" in line and "missing" in line
