"""LFQ(global_entropy=True) under a real 2-process gloo run equals one process on the concatenated batch."""

import os
import subprocess
import sys
from pathlib import Path

import torch

from magvit2 import LFQ

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from quantizer_ddp_worker import WORLD, full_batch  # noqa: E402


def test_global_entropy_two_process_gloo(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parents[1]), os.environ.get("PYTHONPATH", "")])}
    env["OMP_NUM_THREADS"] = "1"
    run = subprocess.run(
        [sys.executable, str(HERE / "quantizer_ddp_worker.py"), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]

    x, z, conv = full_batch()
    lfq = LFQ(dim=12).train()  # one process, whole batch, no all-reduce
    z_full = z.clone().requires_grad_(True)
    single = lfq(z_full)
    single.loss.backward()
    out = lfq(conv(x) * 0.1)
    out.loss.backward()

    local_only = LFQ(dim=12).train()(z[:2]).codebook_entropy
    for r, got in enumerate(ranks):
        half = slice(r * 2, r * 2 + 2)
        # the codebook entropy of the concatenated batch, on every rank (and not the local batch's)
        torch.testing.assert_close(got["codebook_entropy"], single.codebook_entropy, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(got["conv_codebook_entropy"], out.codebook_entropy, rtol=1e-6, atol=1e-6)
        # the per-sample term stays each rank's own mean
        torch.testing.assert_close(
            got["per_sample_entropy"], LFQ(dim=12).train()(z[half]).per_sample_entropy, rtol=1e-6, atol=1e-7
        )
        # gradients: each rank's loss holds 1/WORLD of the batch, so DDP's average of the rank gradients equals one
        # process on the whole batch; the codebook term's gradient flows back through the all-reduce to every rank
        # (float32 sums in another order: tolerance relative to the largest gradient)
        tol = dict(rtol=1e-4, atol=1e-4 * z_full.grad.abs().max().item())
        torch.testing.assert_close(got["z_grad"] / WORLD, z_full.grad[half], **tol)
        tol = dict(rtol=1e-4, atol=1e-4 * conv.weight.grad.abs().max().item())
        torch.testing.assert_close(got["conv_weight_grad"], conv.weight.grad, **tol)
        torch.testing.assert_close(got["conv_bias_grad"], conv.bias.grad, **tol)
    assert abs(local_only.item() - single.codebook_entropy.item()) > 1e-2  # the check above can tell them apart
