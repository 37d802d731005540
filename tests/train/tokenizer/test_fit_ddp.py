"""A real 2-process DDP run (gloo on CPU) of the tokenizer trainer, launched the way users launch it."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from magvit2.nn import LFQ

WORKER = Path(__file__).with_name("ddp_worker.py")


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29517", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(WORKER), str(out)], env=env, capture_output=True, text=True, timeout=600, cwd=out
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out, [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]


@pytest.mark.slow
def test_parameters_and_ema_identical_across_ranks(ddp_run):
    out, (r0, r1) = ddp_run
    assert r0["steps"] == r1["steps"] == 3
    assert not torch.equal(r0["batch"], r1["batch"])  # each rank saw its own shard of the data
    assert r0["params"].keys() == r1["params"].keys()
    for k in r0["params"]:
        assert torch.equal(r0["params"][k], r1["params"][k]), k
    for k in r0["ema"]:
        assert torch.equal(r0["ema"][k], r1["ema"][k]), k
    moved = [k for k in r0["params"] if k in r0["initial"] and not torch.equal(r0["params"][k], r0["initial"][k])]
    assert moved, "training changed no weight"
    assert (out / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.slow
def test_global_codebook_entropy_equals_single_process_on_concatenated_batch(ddp_run):
    _, (r0, r1) = ddp_run
    assert r0["codebook_entropy"].item() == pytest.approx(r1["codebook_entropy"].item(), abs=1e-6)
    from magvit2.nn import Tokenizer
    from magvit2.train.tokenizer.config import load_config

    model = Tokenizer(load_config("tiny").tokenizer_config())
    model.load_state_dict(r0["initial"])
    both = torch.cat([r0["batch"], r1["batch"]])
    with torch.no_grad():
        single = LFQ(dim=18).train()(model.encoder(both))
        local = LFQ(dim=18).train()(model.encoder(r0["batch"]))
    assert r0["codebook_entropy"].item() == pytest.approx(single.codebook_entropy.item(), rel=1e-5, abs=1e-5)
    assert abs(local.codebook_entropy.item() - single.codebook_entropy.item()) > 1e-3  # the all-reduce mattered
