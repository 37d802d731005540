"""A real 2-process DDP run (gloo on CPU) of the AR trainer: ranks stay identical, each sees its own data, and the
all-reduced gradient equals the single-process gradient of the two ranks' batches together."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from magvit2.nn import ARTransformer
from magvit2.train.ar.config import load_ar_config

WORKER = Path(__file__).with_name("ddp_worker.py")


@pytest.fixture(scope="module")
def ddp_run(tokens, tmp_path_factory):
    out = tmp_path_factory.mktemp("ar-ddp")
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29523", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(WORKER), str(tokens / "tokens"), str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=out)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out, [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]


@pytest.mark.slow
def test_ranks_identical_and_each_saw_its_own_data(ddp_run):
    out, (r0, r1) = ddp_run
    assert r0["steps"] == r1["steps"] == 3
    assert not torch.equal(r0["batch"][0], r1["batch"][0])
    for k in r0["params"]:
        assert torch.equal(r0["params"][k], r1["params"][k]), k
    assert any(not torch.equal(r0["params"][k], r0["initial"][k]) for k in r0["params"])
    assert (out / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.slow
def test_all_reduced_gradient_equals_the_gradient_of_both_batches(ddp_run):
    _, (r0, r1) = ddp_run
    config = load_ar_config("ar-tiny", ["model.token_drop=0", "model.resid_dropout_p=0", "model.ffn_dropout_p=0",
                                        "model.class_dropout_prob=0"])  # fmt: skip
    model = ARTransformer(config.ar_config())
    model.load_state_dict(r0["initial"])
    pre, post, cls = (torch.cat([a, b]) for a, b in zip(r0["batch"], r1["batch"], strict=True))
    model.train().loss(pre, post, cls).backward()
    local = ARTransformer(config.ar_config())
    local.load_state_dict(r0["initial"])
    local.train().loss(*r0["batch"]).backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(r0["grads"][name], p.grad, rtol=1e-4, atol=1e-6, msg=name)
        assert torch.equal(r0["grads"][name], r1["grads"][name]), name
    differs = [n for n, p in local.named_parameters() if not torch.allclose(p.grad, r0["grads"][n], atol=1e-6)]
    assert differs  # rank 0's own gradient is not what the optimizer saw: the all-reduce mattered
