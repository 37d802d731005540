"""Backend registry: `magvit2 info`, MAGVIT2_BACKEND, and the fallback when the compiled extension is missing.

Each case runs in a fresh interpreter: the choice is made once, at import.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from magvit2 import ops
from magvit2.ops import backends

ROOT = Path(__file__).resolve().parents[2]
PROBE = """
import warnings, sys, torch
warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as caught:
    import magvit2.ops as ops
    import magvit2.ops  # a second import must not warn again
print("WARNINGS", sum(issubclass(w.category, RuntimeWarning) for w in caught))
for w in caught:
    print("WARNING-TEXT", w.message)
print("CPU", ops.backends.table()["cpu"].backend)
torch.manual_seed(0)
z = torch.randn(257, 18) * 0.05
print("IDX", int(ops.lfq_quantize(z).indices.sum()))
ps, cb = ops.lfq_entropy(z.double(), 100.0, 1e-5)
print("ENT", repr(ps.item()), repr(cb.item()))
"""


def run(code: str, env_extra: dict[str, str], prelude: str = "") -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != backends.ENV}
    env.update(env_extra)
    return subprocess.run([sys.executable, "-c", prelude + code], env=env, capture_output=True, text=True, cwd=ROOT)


def parse(out: str) -> dict[str, str]:
    return {line.split(" ", 1)[0]: line.split(" ", 1)[1] for line in out.splitlines() if " " in line}


def test_default_cpu_backend_is_the_extension():
    assert backends.table()["cpu"].backend == "cpu_ext"
    assert backends.serving("lfq_entropy", "cpu") == "cpu_ext"
    assert backends.serving("lfq_entropy", "npu") == "reference"


def test_info_lists_every_op_and_device():
    out = subprocess.run([sys.executable, "-m", "magvit2.cli", "info"], capture_output=True, text=True, check=True)
    lines = out.stdout.splitlines()
    for op in ("lfq_quantize", "lfq_entropy", "lfq_entropy_backward"):
        rows = [line.split() for line in lines if line.startswith(op + " ")]
        assert {r[1] for r in rows} == {"cpu", "cuda", "npu"}
        assert next(r for r in rows if r[1] == "cpu")[3] == "cpu_ext"
        assert next(r for r in rows if r[1] == "npu")[3] == "reference"


@pytest.mark.skipif(bool(torch.version.cuda), reason="the reason given on a CPU-only torch")
def test_info_gives_the_reason_cuda_ext_is_absent():
    out = subprocess.run(
        [sys.executable, "-W", "always", "-m", "magvit2.cli", "info"], capture_output=True, text=True, check=True
    )
    rows = [line for line in out.stdout.splitlines() if line.split()[1:2] == ["cuda"]]
    assert len(rows) == len(backends.OPS)
    for row in rows:
        assert row.split()[3] == "reference"
        assert f"cuda_ext unavailable: torch {torch.__version__} is built without CUDA" in row
    # A backend this torch cannot run at all is no fallback worth a warning.
    assert "falling back" not in out.stderr
    assert backends.table()["cuda"].backend == "reference"


@pytest.mark.skipif(bool(torch.version.cuda), reason="a CPU-only torch cannot run cuda_ext")
def test_forced_cuda_ext_on_cpu_torch_raises_with_reason():
    out = run("import magvit2.ops", {backends.ENV: "cuda:cuda_ext"})
    assert out.returncode != 0
    assert "MAGVIT2_BACKEND asks for 'cuda_ext' on cuda, which cannot run: torch" in out.stderr
    assert "built without CUDA" in out.stderr


def test_forced_reference_matches_extension():
    default = parse(run(PROBE, {}).stdout)
    forced = run(PROBE, {backends.ENV: "reference"})
    assert forced.returncode == 0, forced.stderr
    got = parse(forced.stdout)
    assert default["CPU"] == "cpu_ext" and got["CPU"] == "reference" and got["WARNINGS"] == "0"
    assert got["IDX"] == default["IDX"]
    ps, cb = map(float, got["ENT"].split())
    ps0, cb0 = map(float, default["ENT"].split())
    assert ps == pytest.approx(ps0, rel=1e-10) and cb == pytest.approx(cb0, rel=1e-10)


def test_forced_reference_runs_the_quantize_suite():
    """The reference backend (the one NPU and every other device runs) passes the bit-exactness tests too."""
    test = ROOT / "tests" / "ops" / "test_quantize.py"
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", str(test), "-k", "K18 or factorized"],
        env={**os.environ, backends.ENV: "cpu:reference"},
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert out.returncode == 0 and " passed" in out.stdout, out.stdout[-2000:]


MISSING_EXT = "import sys; sys.modules['magvit2._C'] = None\n"


def test_missing_extension_warns_once_and_falls_back():
    out = run(PROBE, {}, prelude=MISSING_EXT)
    assert out.returncode == 0, out.stderr
    got = parse(out.stdout)
    assert got["CPU"] == "reference" and got["WARNINGS"] == "1"
    assert "falling back to the plain-torch reference" in got["WARNING-TEXT"]
    assert got["IDX"] == parse(run(PROBE, {}).stdout)["IDX"]


def test_forced_extension_missing_raises_with_reason():
    out = run(PROBE, {backends.ENV: "cpu_ext"}, prelude=MISSING_EXT)
    assert out.returncode != 0
    assert "MAGVIT2_BACKEND asks for 'cpu_ext' on cpu, which cannot run" in out.stderr


@pytest.mark.parametrize("value", ["triton_gpu", "npu:cpu_ext", "cpu:nonsense", "cpu:cuda_ext"])
def test_bad_backend_names_raise(value):
    with pytest.raises(ValueError, match="MAGVIT2_BACKEND"):
        backends.parse_env(value)
    out = run("import magvit2.ops", {backends.ENV: value})
    assert out.returncode != 0 and "MAGVIT2_BACKEND" in out.stderr


def test_parse_env_forms():
    assert backends.parse_env(None) == {}
    assert backends.parse_env("reference") == {"*": "reference"}
    assert backends.parse_env("cpu:reference, cuda:reference") == {"cpu": "reference", "cuda": "reference"}
    assert backends.parse_env("cuda:cuda_ext") == {"cuda": "cuda_ext"}


def test_ops_use_extension_in_this_process():
    # The registered CPU kernel is what the public op calls (not the CompositeExplicitAutograd reference).
    assert torch._C._dispatch_has_kernel_for_dispatch_key("magvit2::lfq_quantize", "CPU")
    assert ops.lfq_quantize(torch.tensor([[1.0, -1.0]])).indices.item() == 1


def test_cuda_order_and_no_device_here():
    assert backends.ORDER["cuda"] == ("cuda_ext", "triton", "reference")
    assert backends.parse_env("triton") == {"*": "triton"}
    choice = backends.table()["cuda"]
    if not torch.cuda.is_available():  # no device: the reference, silently, with both reasons kept for `info`
        assert choice.backend == "reference"
        assert f"cuda_ext unavailable: torch {torch.__version__} is built without CUDA" in choice.reason
        assert "triton unavailable: no CUDA device" in choice.reason
        assert parse(run(PROBE, {}).stdout)["WARNINGS"] == "0"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a CUDA device")
def test_forced_triton_without_cuda_raises_with_the_reason():
    with pytest.raises(RuntimeError, match="asks for 'triton' on cuda, which cannot run: no CUDA device"):
        backends.select("cuda:triton")
    out = run("import magvit2", {backends.ENV: "cuda:triton"})
    assert out.returncode != 0
    assert "MAGVIT2_BACKEND asks for 'triton' on cuda, which cannot run: no CUDA device" in out.stderr


# A CUDA device as the registry sees it (the kernels are never called in these probes).
FAKE_CUDA = "import torch; torch.cuda.is_available = lambda: True\n"
CUDA_PROBE = """
import warnings
warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as caught:
    from magvit2.ops import backends
print("WARNINGS", sum(issubclass(w.category, RuntimeWarning) for w in caught))
for w in caught:
    print("WARNING-TEXT", w.message)
print("CUDA", backends.table()["cuda"].backend)
print("REASON", backends.table()["cuda"].reason)
print("SERVING", backends.serving("lfq_entropy", "cuda"))
for line in backends.info_lines():
    if line.startswith("lfq_entropy ") and " cuda " in line:
        print("INFO", line)
"""


def test_triton_serves_cuda_after_cuda_ext():
    out = run(CUDA_PROBE, {"TRITON_INTERPRET": "1"}, prelude=FAKE_CUDA)
    assert out.returncode == 0, out.stderr
    got = parse(out.stdout)
    assert got["CUDA"] == "triton" and got["SERVING"] == "triton" and got["WARNINGS"] == "0"
    assert f"cuda_ext unavailable: torch {torch.__version__} is built without CUDA" in got["REASON"]
    assert "interpreted (TRITON_INTERPRET=1)" in got["REASON"]
    assert "triton" in got["INFO"].split() and "serves float16/bfloat16/float32" in got["INFO"]


@pytest.mark.parametrize(
    "prelude, reason",
    [
        ("import sys; sys.modules['triton'] = None\n", "triton unavailable: triton is not installed"),
        ("import torch.utils._triton as t; t.has_triton = lambda: False\n", "triton cannot compile for this GPU"),
    ],
    ids=["not-installed", "no-driver"],
)
def test_cuda_falls_back_to_the_reference_with_one_warning(prelude, reason):
    out = run(CUDA_PROBE, {"TRITON_INTERPRET": "0"}, prelude=FAKE_CUDA + prelude)
    assert out.returncode == 0, out.stderr
    got = parse(out.stdout)
    assert got["CUDA"] == "reference" and got["WARNINGS"] == "1" and reason in got["REASON"]
    assert "falling back to the plain-torch reference" in got["WARNING-TEXT"] and reason in got["WARNING-TEXT"]


# An op with a kernel for one device type only, defined the way every op is (magvit2/ops/_library.py).
ONE_DEVICE_OP = """
import warnings
import torch
import magvit2.ops
from magvit2.ops import _library, backends
_library.define("probe_cuda_only", "probe_cuda_only(Tensor x) -> Tensor", kernels=("cuda",))
_library.lib.impl("probe_cuda_only", lambda x: x + 1, "CUDA")
_library.define("probe_cpu_stale", "probe_cpu_stale(Tensor x) -> Tensor", kernels=("cpu",),
                reference_fn=lambda x: x * 2)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    tables = backends.select()
for op, backend in tables["cpu"].ops.items():
    print("CPU", op, backend)
print("CHOICE", tables["cpu"].choice.backend)
print("WARNINGS", len(caught))
for w in caught:
    print("WARNING-TEXT", w.message)
print("VALUE", float(torch.ops.magvit2.probe_cpu_stale(torch.ones(1))))
"""


def test_an_op_for_one_device_leaves_every_cpu_op_on_the_extension():
    out = run(ONE_DEVICE_OP, {})
    assert out.returncode == 0, out.stderr
    cpu = {line.split()[1]: line.split()[2] for line in out.stdout.splitlines() if line.startswith("CPU ")}
    assert parse(out.stdout)["CHOICE"] == "cpu_ext"
    for op in ("lfq_quantize", "lfq_entropy", "lfq_entropy_backward", "sample_tokens", "decode_block", "decode_logits"):
        assert cpu[op] == "cpu_ext", (op, cpu)
    assert cpu["probe_cuda_only"] == "none"  # no CPU kernel and no reference: nothing pretends to serve it
    # an op that should have a CPU kernel but lacks one (a stale build) loses only itself, with one warning
    assert cpu["probe_cpu_stale"] == "reference"
    assert parse(out.stdout)["WARNINGS"] == "1"
    assert "cpu_ext has no cpu kernel for probe_cpu_stale (stale build?" in parse(out.stdout)["WARNING-TEXT"]
    assert parse(out.stdout)["VALUE"] == "2.0"
