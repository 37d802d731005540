"""Peak resident memory of one entropy forward+backward, above the process's own baseline, in a fresh process.

    python benchmarks/memory.py ours|tiled|reference|naive|compat|vqp N [K] [--save PATH]

compat / vqp: magvit2.compat.LFQ / vector-quantize-pytorch's LFQ (training mode, aux loss) on (1, N, K) tokens.

tiled: the tiled op (magvit2::lfq_entropy_tiled) whatever K.

Prints `PEAK_MIB <float>` and `SECONDS <float>` (the call's wall time); --save PATH writes z, its gradient and the
two entropies there (torch.save). The high-water mark is reset (/proc/self/clear_refs = 5) after imports, inputs and
a small warm-up call, so the figure is what the call itself adds: its tensors, autograd saves and workspaces.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _fwd_bwd(kind: str, z):
    import torch

    from magvit2 import ops
    from magvit2.ops import reference

    if kind == "ours":
        ps, cb = ops.lfq_entropy(z, 100.0, 1e-5)
    elif kind == "tiled":
        ps, cb, _ = torch.ops.magvit2.lfq_entropy_tiled.default(z, 100.0, 1e-5, True, 0)
    elif kind == "reference":
        ps, cb, _ = reference.lfq_entropy(z, 100.0, 1e-5)
    elif kind == "naive":
        ps, cb = reference.lfq_entropy_naive(z, 100.0, 1e-5)
    elif kind in ("compat", "vqp"):
        lfq_aux(kind, z).backward()
        return
    else:
        raise ValueError(f"kind must be ours, reference, naive, compat or vqp, got {kind!r}")
    (ps - cb).backward()
    return ps.detach(), cb.detach()


_LFQ = {}


def lfq_aux(kind: str, z):
    """The aux loss of vector-quantize-pytorch's LFQ (vqp) or ours with its API (compat) on (1, N, K) tokens."""
    if (kind, z.shape[1]) not in _LFQ:
        if kind == "vqp":
            from vector_quantize_pytorch import LFQ
        else:
            from magvit2.compat import LFQ
        _LFQ[kind, z.shape[1]] = LFQ(dim=z.shape[1], entropy_loss_weight=0.1, diversity_gamma=1.0)
    return _LFQ[kind, z.shape[1]](z[None], inv_temperature=100.0).entropy_aux_loss


def main(kind: str, n: int, k: int = 18, save: str | None = None) -> tuple[float, float]:
    """(peak MiB above baseline, seconds) of one forward+backward on (N, K) latents, seed 0."""
    import time

    import torch

    torch.manual_seed(0)
    _fwd_bwd(kind, (torch.randn(8, k) * 0.05).requires_grad_())  # thread pools, BLAS buffers, op registration
    z = (torch.randn(n, k) * 0.05).requires_grad_()
    Path("/proc/self/clear_refs").write_text("5")
    base = status_kib("VmRSS")
    start = time.perf_counter()
    out = _fwd_bwd(kind, z)
    seconds = time.perf_counter() - start
    peak = (status_kib("VmHWM") - base) / 1024
    if save is not None:
        torch.save({"z": z.detach(), "grad": z.grad, "entropies": out}, save)
    return peak, seconds


def peak_mib(kind: str, n: int, k: int = 18) -> float:
    """Run `main` in a fresh interpreter and return its peak MiB above baseline."""
    return peak_mib_seconds(kind, n, k)[0]


def peak_mib_seconds(kind: str, n: int, k: int = 18, save: str | None = None) -> tuple[float, float]:
    """Run `main` in a fresh interpreter: (peak MiB above baseline, seconds of the call)."""
    args = [sys.executable, __file__, kind, str(n), str(k)] + (["--save", save] if save else [])
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    fields = dict(line.split()[:2] for line in out.splitlines() if line.startswith(("PEAK_MIB", "SECONDS")))
    return float(fields["PEAK_MIB"]), float(fields["SECONDS"])


if __name__ == "__main__":
    argv = sys.argv[1:]
    save_path = argv[argv.index("--save") + 1] if "--save" in argv else None
    argv = argv[: argv.index("--save")] if "--save" in argv else argv
    peak_mib_, seconds_ = main(argv[0], int(argv[1]), *(int(a) for a in argv[2:]), save=save_path)
    print(f"PEAK_MIB {peak_mib_:.3f}")
    print(f"SECONDS {seconds_:.3f}")
