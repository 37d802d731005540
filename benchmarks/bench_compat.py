"""magvit2.compat.LFQ vs vector-quantize-pytorch's LFQ (release 1.32.0, the test extra's pin): forward + backward of
the entropy aux loss in training mode at its README's settings (inv_temperature 100, entropy weight 0.1), 2^16 and
2^18 codes. Theirs builds the N x 2^K probability table; ours runs the exact entropy kernel. Time and peak memory,
each contender in turn in the same run (memory in fresh processes)."""

import pytest
import torch
from conftest import FULL, interleaved
from memory import lfq_aux, peak_mib

SIZES = [(16, 1024), (18, 1024)] if FULL else [(16, 256), (18, 64)]  # (K, tokens): the README's 32 x 32 map at full


def fwd_bwd(kind: str, z: torch.Tensor) -> torch.Tensor:
    z.grad = None
    lfq_aux(kind, z).backward()
    return z.grad


@pytest.mark.parametrize("k,n", SIZES, ids=lambda v: str(v))
def test_compat_lfq_vs_vector_quantize_pytorch(k, n, ratio):
    pytest.importorskip("vector_quantize_pytorch")
    torch.manual_seed(0)
    z = (torch.randn(n, k) * 0.1).requires_grad_()
    times = interleaved({"ours": lambda: fwd_bwd("compat", z), "theirs": lambda: fwd_bwd("vqp", z)}, 3 if FULL else 1)
    ours, theirs = fwd_bwd("compat", z).clone(), fwd_bwd("vqp", z)
    # theirs sums 2^K float32 probabilities per token: compare against the largest entry
    torch.testing.assert_close(ours, theirs, rtol=0, atol=5e-3 * theirs.abs().max().item())
    mem_ours, mem_theirs = peak_mib("compat", n, k), peak_mib("vqp", n, k)
    assert mem_ours > 0 and mem_theirs > 0
    bench = f"LFQ aux fwd+bwd 2^{k} N={n}"
    ratio(bench, "vector-quantize-pytorch / compat.LFQ (time)", times["theirs"] / times["ours"], "> 1")
    ratio(bench, "vector-quantize-pytorch / compat.LFQ (peak RSS)", mem_theirs / mem_ours, "> 1")
    ratio(bench, "compat.LFQ ms (context)", times["ours"] * 1e3)
