"""Build script: the C++ CPU extension `magvit2._C` (and, with a CUDA torch and toolkit, `magvit2._C_cuda`).

Environment:
  MAGVIT2_BUILD_EXT=0   pure-Python install; every op then runs the plain-torch reference.
  MAGVIT2_BUILD_CUDA=0  no CUDA extension even where one could be built.
  MAGVIT2_DEBUG=1       -O0 -g.
  MAGVIT2_PORTABLE=1    no x86-specific code (-DMAGVIT2_NO_X86_KERNELS: no AVX2 clones, float32 decode_block and
                        decode_logits run the reference's ATen calls), as a non-x86 machine builds anyway; for building
                        and testing that code on x86-64 (csrc/common/arch.h).
  MAX_JOBS              parallel compile jobs (torch's BuildExtension honours it).
  CUDA_HOME             CUDA toolkit root (the folder holding bin/nvcc); found from nvcc on PATH when unset.
  TORCH_CUDA_ARCH_LIST  GPU architectures to compile for, e.g. "9.0" (torch's default otherwise).

The CUDA extension is built only with a CUDA torch (`torch.version.cuda`) and a toolkit; build it with
`pip install --no-build-isolation .`, since an isolated build environment holds the CPU torch (see README, CUDA).
The C++ standard (for the .cpp and the .cu files alike) is CMakeLists.txt's MAGVIT2_CXX_STANDARD.
"""

import glob
import os
import re
import shutil
import subprocess

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = os.path.dirname(os.path.abspath(__file__))


def _is_toolkit(root: str | None) -> bool:
    return bool(root) and os.path.isfile(os.path.join(root, "bin", "nvcc"))


def find_cuda_home() -> str | None:
    """CUDA toolkit root: $CUDA_HOME / $CUDA_PATH, else the root above the nvcc on PATH. nvcc may be a wrapper
    script in another folder (/usr/local/bin/nvcc here): its --dryrun output names the real root (TOP=...)."""
    if os.environ.get("CUDA_HOME"):
        if _is_toolkit(os.environ["CUDA_HOME"]):
            return os.environ["CUDA_HOME"]
        print(f"magvit2: CUDA_HOME={os.environ['CUDA_HOME']} holds no bin/nvcc")
        return None
    if _is_toolkit(os.environ.get("CUDA_PATH")):
        return os.environ["CUDA_PATH"]
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return "/usr/local/cuda" if _is_toolkit("/usr/local/cuda") else None
    root = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
    if os.path.isfile(os.path.join(root, "include", "cuda_runtime.h")):
        return root
    try:
        dry = [nvcc, "--dryrun", "-E", "-x", "cu", os.devnull]
        out = subprocess.run(dry, capture_output=True, text=True, timeout=60).stderr
    except (OSError, subprocess.SubprocessError):
        return None
    top = re.search(r"^#\$ TOP=(.+)$", out, re.MULTILINE)
    root = os.path.normpath(top.group(1).strip()) if top else None
    return root if _is_toolkit(root) else None


def cuda_toolkit() -> str | None:
    """CUDA toolkit root when the CUDA extension should be built: a CUDA torch and a toolkit, else None."""
    import torch

    if os.environ.get("MAGVIT2_BUILD_CUDA", "1") == "0" or not torch.version.cuda:
        return None
    cuda_home = find_cuda_home()
    if cuda_home is None:
        print("magvit2: torch has CUDA but no CUDA toolkit was found (set CUDA_HOME): building the CPU extension only")
        return None
    # torch.utils.cpp_extension fixes its CUDA_HOME when first imported (and guesses the folder above a wrapper
    # script's bin/): export ours before that import.
    os.environ["CUDA_HOME"] = cuda_home
    return cuda_home


def cuda_extension(cuda_home: str, opt: list[str], cxx: list[str]):
    """`magvit2._C_cuda`: the kernels of csrc/cuda, registered for the CUDA dispatch key."""
    from torch.utils import cpp_extension

    cpp_extension.CUDA_HOME = cuda_home  # in case torch.utils.cpp_extension was imported before cuda_toolkit()
    include_dirs = [os.path.join(ROOT, "csrc")]
    try:  # torch's own CUDA wheels ship the cuBLAS/cuSPARSE headers that a compiler-only toolkit lacks
        import nvidia.cu13

        include_dirs += [os.path.join(p, "include") for p in nvidia.cu13.__path__]
    except ImportError:
        pass
    sources = sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu"))) + ["csrc/module_cuda.cpp"]
    # No --use_fast_math: sample_tokens mirrors the reference's IEEE roundings (and uses _rn intrinsics as well).
    nvcc = [*opt, cxx_standard(), "-Xcompiler", "-fvisibility=hidden"]
    return cpp_extension.CUDAExtension(
        "magvit2._C_cuda",
        sources,
        include_dirs=include_dirs,
        extra_compile_args={"cxx": [c for c in cxx if c != "-fopenmp"], "nvcc": nvcc},
    )


def cxx_standard() -> str:
    """-std=c++NN from CMakeLists.txt's `set(MAGVIT2_CXX_STANDARD NN)`, the one place the standard is written (torch
    >= 2.14's ATen.h stops with an #error below C++20)."""
    with open(os.path.join(ROOT, "CMakeLists.txt")) as f:
        found = re.search(r"^set\(MAGVIT2_CXX_STANDARD (\d+)\)", f.read(), re.MULTILINE)
    if found is None:
        raise RuntimeError("CMakeLists.txt has no `set(MAGVIT2_CXX_STANDARD <NN>)` line")
    return f"-std=c++{found.group(1)}"


PURE_PYTHON_MARKER = "_pure_python"  # magvit2/_pure_python in a MAGVIT2_BUILD_EXT=0 build: see ops/backends.py


class PurePythonBuild(build_py):
    """build_py that marks the package as built without the extension on purpose, so importing it does not warn
    that the extension is missing (a build that has the extension file but cannot load it still warns)."""

    def run(self):
        super().run()
        marker = os.path.join(self.build_lib, "magvit2", PURE_PYTHON_MARKER)
        with open(marker, "w") as f:
            f.write("built with MAGVIT2_BUILD_EXT=0: every op runs the plain-torch reference\n")


def extensions():
    if os.environ.get("MAGVIT2_BUILD_EXT", "1") == "0":
        return [], {"build_py": PurePythonBuild}
    if os.environ.get("MAGVIT2_REQUIREMENTS_ONLY") == "1":  # set by build_backend while torch is not yet installed
        return [], {}
    cuda_home = cuda_toolkit()
    from torch.utils.cpp_extension import BuildExtension, CppExtension

    debug = os.environ.get("MAGVIT2_DEBUG", "0") == "1"
    opt = ["-O0", "-g"] if debug else ["-O3"]
    # at::parallel_for is inlined from ATen's OpenMP header: without -fopenmp it silently runs on one thread.
    cxx = [*opt, "-fopenmp", cxx_standard(), "-fvisibility=hidden", "-fno-strict-aliasing"]
    if os.environ.get("MAGVIT2_PORTABLE", "0") == "1":
        cxx.append("-DMAGVIT2_NO_X86_KERNELS")
    sources = sorted(glob.glob(os.path.join("csrc", "cpu", "*.cpp"))) + ["csrc/module.cpp"]
    ext = CppExtension(
        "magvit2._C",
        sources,
        include_dirs=[os.path.join(ROOT, "csrc")],
        extra_compile_args={"cxx": cxx},
        extra_link_args=["-fopenmp"],
    )
    exts = [ext]
    if cuda_home is not None:
        exts.append(cuda_extension(cuda_home, opt, cxx))
    return exts, {"build_ext": BuildExtension.with_options(no_python_abi_suffix=False)}


ext_modules, cmdclass = extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
