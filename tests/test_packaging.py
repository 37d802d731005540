"""Packaging: an isolated `pip wheel .` compiles against the installed torch (never fetches another), a pure-Python
wheel with MAGVIT2_BUILD_EXT=0, and the CMake C++ test build of the same kernels."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import sysconfig
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
def test_pure_python_wheel_imports_quietly_and_runs_the_demo(tmp_path):
    wheel, _ = _wheel(tmp_path, {"MAGVIT2_BUILD_EXT": "0"})
    names = zipfile.ZipFile(wheel).namelist()
    assert "magvit2/ops/reference/lfq.py" in names and "magvit2/_pure_python" in names
    assert "magvit2/train/configs/tokenizer/tiny.yaml" in names and "magvit2/train/configs/ar/ar-tiny.yaml" in names
    assert not any(n.endswith(".so") for n in names)
    # A fresh venv holding only the wheel, with this environment's third-party packages on its path (a .pth, which
    # leaves out the editable install of this checkout): it imports without a warning, since no extension is expected
    # and there is no fallback to report, and `magvit2 info` says why the reference serves the CPU.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())  # fmt: skip
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-compile", "--target", str(site)]
    subprocess.run([*pip, str(wheel)], check=True, capture_output=True)
    env = {k: v for k, v in os.environ.items() if k not in ("MAGVIT2_BACKEND", "PYTHONPATH")}
    code = "import magvit2, magvit2.ops; print(magvit2.__file__); print(magvit2.ops.backends.table()['cpu'].backend)"
    out = subprocess.run([python, "-W", "error", "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0 and out.stderr == "", out.stderr[-3000:]
    assert out.stdout.split() == [str(site / "magvit2" / "__init__.py"), "reference"]
    info = subprocess.run([python, "-m", "magvit2.cli", "info"], env=env, cwd=tmp_path, capture_output=True,
                          text=True, check=True)  # fmt: skip
    assert "not built: a pure-Python install (MAGVIT2_BUILD_EXT=0)" in info.stdout and info.stderr == ""
    demo = [python, "-m", "magvit2.cli", "demo", "--out", str(tmp_path / "demo"), "--tokenizer-steps", "2",
            "--ar-steps", "2", "--per-class", "1", "--no-progress"]  # fmt: skip
    out = subprocess.run(demo, env=env, cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "class-consistency accuracy" in out.stdout and (tmp_path / "demo" / "samples.png").is_file()


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


# Imports the documented installs need not cover: each is loaded only where its hardware is, behind a check.
HARDWARE_ONLY = {
    "triton": "the CUDA Triton backend, loaded only when a CUDA device is present (magvit2/ops/backends.py)",
    "torch_npu": "the Ascend accelerator, imported only for --accelerator npu (magvit2/train/common/npu.py)",
}


def _documented_extras() -> set[str]:
    """The extras the README's Install section installs (`pip install ".[train]"` -> train)."""
    import re

    readme = (ROOT / "README.md").read_text()
    install = readme.split("\n## Install\n", 1)[1].split("\n## ", 1)[0]
    extras = set()
    for line in install.splitlines():
        if "pip install" in line:
            for group in re.findall(r"\.\[([\w,]+)\]", line.split("#", 1)[0]):
                extras.update(group.split(","))
    return extras


def _third_party_imports() -> dict[str, set[str]]:
    import ast

    found: dict[str, set[str]] = {}
    for path in (ROOT / "magvit2").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top != "magvit2":
                    found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def test_documented_installs_cover_every_import():
    """Every third-party module the package imports comes with `pip install .` or an extra the README's Install
    section installs (so the README's commands are enough for every CLI command and demo)."""
    import importlib.metadata
    import re

    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = _documented_extras()
    assert "train" in extras
    requirements = list(project["dependencies"])
    for extra in extras:
        requirements += project["optional-dependencies"][extra]
    covered = {re.split(r"[\s<>=!~;\[]", r, maxsplit=1)[0].lower().replace("_", "-") for r in requirements}
    distributions = importlib.metadata.packages_distributions()
    uncovered = {}
    for module, files in _third_party_imports().items():
        if module in HARDWARE_ONLY:
            continue
        dists = {d.lower().replace("_", "-") for d in distributions.get(module, [module])}
        if not dists & covered:
            uncovered[module] = sorted(files)
    assert not uncovered, f"imported but installed by no documented command: {uncovered}"
    # and the hardware-only ones stay behind their checks: imported inside functions, never at a module's top
    import ast

    for module in HARDWARE_ONLY:
        for path in (ROOT / "magvit2").rglob("*.py"):
            tree = ast.parse(path.read_text())
            top_level = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
            names = [a.name for n in top_level if isinstance(n, ast.Import) for a in n.names]
            names += [n.module for n in top_level if isinstance(n, ast.ImportFrom) and n.level == 0 and n.module]
            if any(name.split(".")[0] == module for name in names):
                assert path.is_relative_to(ROOT / "magvit2" / "ops" / "triton"), f"{path} imports {module} at the top"
