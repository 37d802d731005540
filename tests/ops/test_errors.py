"""Bad arguments raise a clear error that names the argument, from the Python API and from the raw C++ ops."""

import pytest
import torch

from magvit2 import ops

Z = torch.randn(8, 18)


@pytest.mark.parametrize(
    "call,exc,match",
    [
        (lambda: ops.lfq_quantize(torch.randn(18)), ValueError, r"z must be 2-D"),
        (lambda: ops.lfq_quantize(torch.randn(2, 3, 18)), ValueError, r"z must be 2-D"),
        (lambda: ops.lfq_quantize(torch.randn(4, 0)), ValueError, r"K >= 1"),
        (lambda: ops.lfq_quantize(torch.ones(4, 18, dtype=torch.int32)), ValueError, r"z must be float"),
        (lambda: ops.lfq_quantize(torch.ones(4, 18, dtype=torch.bool)), ValueError, r"z must be float"),
        (lambda: ops.lfq_quantize([[0.1, 0.2]]), TypeError, r"z must be a torch.Tensor"),
        (lambda: ops.lfq_quantize(torch.randn(4, 63)), ValueError, r"K = 63 .*factorized_bits"),
        (lambda: ops.lfq_quantize(Z, [6, 11]), ValueError, r"factorized_bits .* sum to 17.* K = 18"),
        (lambda: ops.lfq_quantize(Z, [6, 13]), ValueError, r"factorized_bits"),
        (lambda: ops.lfq_quantize(Z, [0, 18]), ValueError, r"factorized_bits"),
        (lambda: ops.lfq_quantize(Z, [-6, 24]), ValueError, r"factorized_bits"),
        (lambda: ops.lfq_quantize(Z, []), ValueError, r"factorized_bits"),
        (lambda: ops.lfq_quantize(Z, [6.0, 12.0]), ValueError, r"factorized_bits"),
        (lambda: ops.lfq_quantize(torch.randn(4, 70), [5, 65]), ValueError, r"factorized_bits.*62"),
        (lambda: ops.lfq_entropy(torch.randn(18)), ValueError, r"z must be 2-D"),
        (lambda: ops.lfq_entropy(torch.ones(4, 18, dtype=torch.int64)), ValueError, r"z must be float"),
        (lambda: ops.lfq_entropy(Z, 0.0), ValueError, r"inv_temperature"),
        (lambda: ops.lfq_entropy(Z, -1.0), ValueError, r"inv_temperature"),
        (lambda: ops.lfq_entropy(Z, float("nan")), ValueError, r"inv_temperature"),
        (lambda: ops.lfq_entropy(Z, float("inf")), ValueError, r"inv_temperature"),
        (lambda: ops.lfq_entropy(Z, 100.0, -1e-5), ValueError, r"eps"),
        (lambda: ops.lfq_entropy(Z, 100.0, float("nan")), ValueError, r"eps"),
        (lambda: ops.lfq_entropy(torch.randn(4, 33)), ValueError, r"K = 33 .* K <= 32"),
        (lambda: ops.lfq_codebook_average(torch.randn(4, 25)), ValueError, r"K = 25 .* K <= 24"),
        (lambda: ops.lfq_codebook_average(Z, 0.0), ValueError, r"inv_temperature"),
    ],
    ids=lambda v: None if callable(v) or isinstance(v, type) else v[:24],
)
def test_python_api(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: torch.ops.magvit2.lfq_quantize(torch.randn(18), [18]), r"lfq_quantize: z must be 2-D"),
        (lambda: torch.ops.magvit2.lfq_quantize(torch.ones(4, 18, dtype=torch.int32), [18]), r"z must be float"),
        (lambda: torch.ops.magvit2.lfq_quantize(Z, [6, 11]), r"group_bits .* sum to 17, but z has K = 18"),
        (lambda: torch.ops.magvit2.lfq_quantize(Z, []), r"group_bits must name at least one group"),
        (lambda: torch.ops.magvit2.lfq_quantize(torch.randn(4, 70), [70]), r"group_bits entry must be in \[1, 62\]"),
        (lambda: torch.ops.magvit2.lfq_entropy(torch.randn(2, 3, 4), 1.0, 0.0), r"lfq_entropy: z must be 2-D"),
        (lambda: torch.ops.magvit2.lfq_entropy(Z, -1.0, 0.0), r"inv_temperature must be a finite number > 0"),
        (lambda: torch.ops.magvit2.lfq_entropy(Z, 1.0, -1.0), r"eps must be a finite number >= 0"),
        (lambda: torch.ops.magvit2.lfq_entropy(torch.randn(2, 30), 1.0, 0.0), r"K <= 24"),
        (lambda: torch.ops.magvit2.lfq_entropy_tiled(torch.randn(2, 33), 1.0, 0.0, True, 0), r"K <= 32"),
        (lambda: torch.ops.magvit2.lfq_entropy_tiled(Z, 1.0, 0.0, True, -1), r"tile must be >= 0"),
        (
            lambda: torch.ops.magvit2.lfq_entropy_backward(
                torch.tensor(1.0), torch.tensor(1.0), None, Z, torch.zeros(4, 4), 1.0, 0.0
            ),
            r"avg must be \(2\^Ka, 2\^Kb\) = \(512, 512\)",
        ),
    ],
)
def test_raw_ops_check_arguments(call, match):
    with pytest.raises(RuntimeError, match=match):
        call()
