"""Every op takes zero rows (a generation of no images, an empty shard): empty outputs of the right shape, on each
backend. Each backend runs in a child process: a kernel that divides by the row count dies by SIGFPE, which would
take pytest down with it."""

import json
import os
import subprocess
import sys

import pytest
import torch

CHILD = r"""
import json, sys, torch
from magvit2 import ops
from magvit2.ops import backends
from magvit2.ops.ar_decode import decode_block, decode_logits

device = sys.argv[1]
out = {"serving": {op: backends.serving(op, torch.device(device).type) for op in
                   ("lfq_quantize", "lfq_entropy", "sample_tokens", "decode_block", "decode_logits")}}
z = torch.zeros(0, 18, device=device)
codes, idx = ops.lfq_quantize(z)
_, groups = ops.lfq_quantize(z, [6, 12])
out["lfq_quantize"] = [list(codes.shape), list(idx.shape), [list(g.shape) for g in groups]]
zg = torch.zeros(0, 6, device=device, requires_grad=True)
ps, cb = ops.lfq_entropy(zg, 10.0, 1e-5)
(ps - cb).backward()
out["lfq_entropy"] = [ps.item(), abs(cb.item()), list(zg.grad.shape)]
zt = torch.zeros(0, 22, device=device, requires_grad=True)  # K > 20: the tiled path
ps, cb = ops.lfq_entropy(zt, 10.0, 1e-5)
(ps - cb).backward()
out["lfq_entropy_tiled"] = [ps.item(), abs(cb.item()), list(zt.grad.shape)]
logits = torch.zeros(0, 10, device=device)
out["sample_tokens"] = [list(ops.sample_tokens(logits, top_k=3, top_p=0.9).shape),
                        list(ops.sample_tokens(logits, uncond=logits, cfg_scale=2.0).shape)]
if torch.device(device).type == "cpu":  # the decode ops are CPU kernels; other devices run the reference
    heads, d, hid = 2, 8, 32
    dim = heads * d
    g = torch.ones(dim)
    w = [g, torch.randn(3 * dim, dim), torch.randn(dim, dim), g, torch.randn(hid, dim), torch.randn(hid, dim),
         torch.randn(dim, hid)]
    rope = torch.rand(5, d // 2, 2)
    k, v = torch.zeros(0, heads, 5, d), torch.zeros(0, heads, 5, d)
    y = decode_block(torch.zeros(0, dim), *w, k, v, rope, torch.tensor(2), 1e-5)
    head = torch.randn(32, dim)
    shapes = [list(y.shape), list(decode_logits(torch.zeros(0, dim), g, head, 1e-5).shape),
              list(decode_logits(torch.zeros(0, dim), g, head, 1e-5, cfg_scale=2.0).shape)]
    out["decode"] = shapes
print(json.dumps(out))
"""

CASES = [("cpu", "cpu_ext"), ("cpu", "reference")]
if torch.cuda.is_available():
    CASES += [("cuda", "cuda_ext"), ("cuda", "triton"), ("cuda", "reference")]


@pytest.mark.parametrize("device, backend", CASES, ids=[f"{d}-{b}" for d, b in CASES])
def test_every_op_takes_zero_rows(device, backend):
    env = {**os.environ, "MAGVIT2_BACKEND": f"{device}:{backend}", "OMP_NUM_THREADS": "1"}
    child = subprocess.run([sys.executable, "-c", CHILD, device], capture_output=True, text=True, env=env, timeout=300)
    assert child.returncode == 0, f"rc {child.returncode}: {child.stderr[-2000:]}"
    out = json.loads(child.stdout.splitlines()[-1])
    assert out["serving"]["lfq_quantize"] == backend
    assert out["lfq_quantize"] == [[0, 18], [0], [[0], [0]]]
    assert out["lfq_entropy"] == [0.0, 0.0, [0, 6]]
    assert out["lfq_entropy_tiled"] == [0.0, 0.0, [0, 22]]
    assert out["sample_tokens"] == [[0], [0]]
    if device == "cpu":
        assert out["serving"]["decode_block"] == out["serving"]["decode_logits"] == backend
        assert out["decode"] == [[0, 16], [0, 32], [0, 32]]
