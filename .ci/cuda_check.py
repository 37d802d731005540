"""Checks of the built CUDA extension that need no GPU (run by .ci/cuda_build_check.sh in the CUDA-torch venv)."""

import os
import shutil
import subprocess
import sys

import magvit2._C_cuda  # noqa: F401  (fails loudly if it does not load or link)
import torch

from magvit2.ops import backends
from magvit2.ops._library import OPS, ops_with_kernels, qualname

# Ops whose CUDA kernel is Triton's alone (no csrc/cuda kernel): the backend table hands them from cuda_ext to triton
# (or the reference where triton cannot run), op by op. lfq_entropy_tiled: magvit2/ops/triton/entropy_tiled.py.
TRITON_ONLY = {"lfq_entropy_tiled"}
CUDA_OPS = tuple(op for op in ops_with_kernels("cuda") if op not in TRITON_ONLY)

assert torch.version.cuda, f"torch {torch.__version__} has no CUDA"
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), magvit2._C_cuda: {magvit2._C_cuda.__file__}")

for op in OPS:
    keys = ("CUDA", "CPU") if op in CUDA_OPS else ("CPU",)
    for key in keys:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(qualname(op), key), f"{qualname(op)}: no {key} kernel"
    kind = "yes" if op in CUDA_OPS else "triton only" if op in TRITON_ONLY else "none (CPU op)"
    print(f"  {qualname(op):<30} CUDA kernel: {kind}")

choice = backends.table()["cuda"]
assert choice.backend == "cuda_ext", choice
for op in CUDA_OPS:
    assert backends.serving(op, "cuda") == "cuda_ext", op
for op in TRITON_ONLY:
    assert backends.serving(op, "cuda") in ("triton", "reference"), (op, backends.serving(op, "cuda"))

magvit2_cli = shutil.which("magvit2", path=os.path.dirname(sys.executable))
info = subprocess.run([magvit2_cli, "info"], capture_output=True, text=True, check=True).stdout
rows = [line.split() for line in info.splitlines() if line.split()[:1] and line.split()[0] in CUDA_OPS]
cuda_rows = [r for r in rows if r[1] == "cuda"]
assert len(cuda_rows) == len(CUDA_OPS) and all(r[3] == "cuda_ext" for r in cuda_rows), info
print("magvit2 info, cuda rows:")
print("\n".join(line for line in info.splitlines() if " cuda " in line))

# The CPU kernels of the same install still serve CPU tensors (both extensions load side by side).
codes, indices = torch.ops.magvit2.lfq_quantize(torch.tensor([[0.5, -1.0, 0.0, 2.0]]), [4])
assert indices.tolist() == [[9]] and codes.tolist() == [[1.0, -1.0, -1.0, 1.0]]
print("ok")
