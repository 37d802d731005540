"""Build script: the C++ CPU extension `magvit2._C` (and, with a CUDA torch and toolkit, `magvit2._C_cuda`).

Environment:
  MAGVIT2_BUILD_EXT=0   pure-Python install; every op then runs the plain-torch reference.
  MAGVIT2_DEBUG=1       -O0 -g.
  MAX_JOBS              parallel compile jobs (torch's BuildExtension honours it).
"""

import glob
import os

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def extensions():
    if os.environ.get("MAGVIT2_BUILD_EXT", "1") == "0":
        return [], {}
    if os.environ.get("MAGVIT2_REQUIREMENTS_ONLY") == "1":  # set by build_backend while torch is not yet installed
        return [], {}
    from torch.utils.cpp_extension import BuildExtension, CppExtension

    debug = os.environ.get("MAGVIT2_DEBUG", "0") == "1"
    opt = ["-O0", "-g"] if debug else ["-O3"]
    # at::parallel_for is inlined from ATen's OpenMP header: without -fopenmp it silently runs on one thread.
    cxx = [*opt, "-fopenmp", "-std=c++17", "-fvisibility=hidden", "-fno-strict-aliasing"]
    sources = sorted(glob.glob(os.path.join("csrc", "cpu", "*.cpp"))) + ["csrc/module.cpp"]
    ext = CppExtension(
        "magvit2._C",
        sources,
        include_dirs=[os.path.join(ROOT, "csrc")],
        extra_compile_args={"cxx": cxx},
        extra_link_args=["-fopenmp"],
    )
    return [ext], {"build_ext": BuildExtension.with_options(no_python_abi_suffix=False)}


ext_modules, cmdclass = extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
