"""The --threads policy (magvit2/ops/threads.py) and the flag on every command that runs a model."""

import pytest
import torch

from magvit2.cli import build_parser
from magvit2.nn import ARTransformer, Tokenizer
from magvit2.ops import threads
from magvit2.ops.threads import SMALL_MODEL_PARAMS, auto_threads, parse_threads, resolve_threads, using_threads


def test_auto_gives_small_models_one_thread_and_large_ones_every_cpu(monkeypatch):
    monkeypatch.setattr(threads, "available_cpus", lambda: 16)
    tiny = Tokenizer.from_preset("tiny")
    assert resolve_threads("auto", tiny) == resolve_threads(None, tiny) == 1
    assert resolve_threads("auto", ARTransformer.from_preset("tiny"), tiny) == 1
    assert auto_threads(SMALL_MODEL_PARAMS - 1) == 1
    assert auto_threads(SMALL_MODEL_PARAMS) == 16  # e.g. the 112M open-magvit2-128-L tokenizer
    assert auto_threads(SMALL_MODEL_PARAMS, processes=4) == 4 and auto_threads(10**9, processes=32) == 1
    assert resolve_threads(3, tiny) == resolve_threads("3", tiny) == 3  # a number always wins


@pytest.mark.parametrize("bad", [0, -1, "0", "two", 1.5, True, ""])
def test_bad_thread_counts_are_one_line_errors(bad):
    with pytest.raises(ValueError, match=r"^threads must be a positive integer or 'auto', got "):
        parse_threads(bad)


def test_using_threads_sets_and_restores():
    before = torch.get_num_threads()
    with using_threads(1, Tokenizer.from_preset("tiny")) as n:
        assert n == 1 and torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), using_threads(1):
        raise RuntimeError  # restored on the way out of an error too
    assert torch.get_num_threads() == before


COMMANDS = [
    ["train", "tokenizer"], ["train", "ar"], ["demo"], ["eval", "tokenizer"], ["encode"], ["reconstruct"], ["sample"],
]  # fmt: skip


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_that_runs_a_model_takes_threads_and_states_the_default(command, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args([*command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--threads THREADS" in text
    assert "default: 1 for models under 5M parameters" in text and f"all {threads.available_cpus()} CPUs" in text


def test_the_flag_parses_a_count_or_leaves_auto_to_the_config():
    args = build_parser().parse_args(["train", "ar", "--config", "ar-tiny", "--threads", "2"])
    assert args.threads == 2
    assert build_parser().parse_args(["sample", "--model", "m", "--classes", "0", "--out", "a.png"]).threads is None
    with pytest.raises(SystemExit):
        build_parser().parse_args(["encode", "--model", "m", "--data", "d", "--out", "o", "--threads", "0"])
