"""GPU-only tests (the CUDA kernels against the CPU ones). Collected only where a CUDA device exists, so a CPU run
reports them neither as passed nor as skipped; on a GPU machine: `pytest tests/gpu`."""

import torch

collect_ignore_glob = [] if torch.cuda.is_available() else ["test_*.py"]
