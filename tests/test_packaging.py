"""Packaging: an isolated `pip wheel .` compiles against the installed torch (never fetches another), a pure-Python
wheel with MAGVIT2_BUILD_EXT=0, and the CMake C++ test build of the same kernels."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _backend_requires(env_extra: dict[str, str]) -> list[str]:
    code = "import backend; print('\\n'.join(backend.get_requires_for_build_wheel()))"
    env = {**os.environ, **env_extra}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT / "build_backend", env=env, capture_output=True, text=True, check=True
    )
    return out.stdout.split()


def test_build_requires_pin_installed_torch():
    requires = _backend_requires({})
    assert f"torch=={torch.__version__.split('+')[0]}" in requires
    assert not any(r.startswith("torch") for r in _backend_requires({"MAGVIT2_BUILD_EXT": "0"}))


def _wheel(tmp_path: Path, env_extra: dict[str, str]) -> tuple[Path, str]:
    src = tmp_path / "src"
    # A copy without in-tree build outputs (the editable install's .so, build dirs), as a clean clone has.
    ignore = shutil.ignore_patterns(".venv", "build", "build-cmake", "*.so", "__pycache__", ".benchmarks", "*.egg-info")
    shutil.copytree(ROOT, src, ignore=ignore)
    env = {**os.environ, "MAX_JOBS": "2", **env_extra}
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "-w", str(tmp_path / "dist"), str(src)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("magvit2-*.whl")
    return wheel, out.stdout + out.stderr


@pytest.mark.slow
def test_isolated_wheel_builds_extension_against_installed_torch(tmp_path):
    wheel, log = _wheel(tmp_path, {})
    assert "nvidia" not in log.lower(), "the isolated build pulled a CUDA torch"
    names = zipfile.ZipFile(wheel).namelist()
    (ext,) = [n for n in names if n.startswith("magvit2/_C") and n.endswith(".so")]
    so = tmp_path / "unpacked" / ext
    zipfile.ZipFile(wheel).extract(ext, tmp_path / "unpacked")
    # Loading it into this torch resolves every ATen/c10 symbol: a build against other headers would fail here.
    code = f"import torch, magvit2; torch.ops.load_library({str(so)!r}); print('loaded')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and "loaded" in out.stdout, out.stderr[-3000:]


@pytest.mark.slow
def test_pure_python_wheel(tmp_path):
    wheel, _ = _wheel(tmp_path, {"MAGVIT2_BUILD_EXT": "0"})
    names = zipfile.ZipFile(wheel).namelist()
    assert "magvit2/ops/reference/lfq.py" in names
    assert "magvit2/train/configs/tokenizer/tiny.yaml" in names and "magvit2/train/configs/ar/ar-tiny.yaml" in names
    assert not any(n.endswith(".so") for n in names)


def _tool(name: str) -> str:
    # The test extras install cmake and ninja into the environment; fall back to the system's.
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else (shutil.which(name) or name)


@pytest.mark.slow
@pytest.mark.parametrize("portable", [False, True], ids=["x86-kernels", "portable"])
def test_cmake_cpp_build_and_tests(tmp_path, portable):
    """The C++ test passes with the x86 kernels and with the portable build (the code non-x86 machines compile),
    which holds no AVX instruction at all."""
    build = tmp_path / "build"
    cmake = _tool("cmake")
    configure = [cmake, "-S", str(ROOT), "-B", str(build), "-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={_tool('ninja')}"]
    configure.append(f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}")
    configure.append(f"-DMAGVIT2_PORTABLE={'ON' if portable else 'OFF'}")
    out = subprocess.run(configure, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    out = subprocess.run([cmake, "--build", str(build), "-j", "2"], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    out = subprocess.run([str(build / "magvit2_cpp_test")], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 failure(s)" in out.stdout and out.stdout.count("ok ") >= 10
    if platform.machine() in ("x86_64", "AMD64") and shutil.which("objdump"):
        asm = subprocess.run(["objdump", "-d", str(build / "libmagvit2_cpu.a")], capture_output=True, text=True).stdout
        assert ("ymm" in asm) != portable, "AVX (ymm) instructions in the library" if portable else "no AVX2 path"
