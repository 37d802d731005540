#!/usr/bin/env bash
# Compile-and-link check of the CUDA kernels (csrc/cuda) on a machine without a GPU: builds magvit2._C_cuda against
# a CUDA torch with nvcc, then .ci/cuda_check.py checks that every op has a CUDA kernel and that `magvit2 info` lists
# cuda_ext. Nothing here runs a kernel (that needs a GPU).
#
# The CUDA-torch venv (~6 GB) is kept outside the repo in $MAGVIT2_CUDA_VENV (default:
# ~/.cache/magvit2/venv-cuda-<torch>) and reused when present; the build tree is build/cuda-check, apart from the CPU
# build's (other torch, other flags), so a rerun only recompiles what changed. Run by `make test` and `make cuda-check`.
# From scratch on the 2-core build machine: ~8 min CPU time (venv + nvcc for sm_90); cached: ~1 min.
#   TORCH_CUDA            torch requirement (default: torch-cuda of pyproject.toml's [tool.magvit2] table)
#   TORCH_CUDA_ARCH_LIST  GPU architectures (default 9.0: one arch keeps the check short)
#   MAX_JOBS              parallel nvcc/c++ jobs (default 2)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

if ! command -v nvcc >/dev/null 2>&1; then
  echo "cuda-check skipped: no nvcc on PATH"
  exit 0
fi

TORCH_CUDA=${TORCH_CUDA:-$(sed -n '/^\[tool\.magvit2\]/,/^\[/s/^torch-cuda *= *"\(.*\)"$/\1/p' pyproject.toml)}
if [ -z "$TORCH_CUDA" ]; then
  echo "cuda-check: no torch-cuda in pyproject.toml's [tool.magvit2] table and no TORCH_CUDA" >&2
  exit 1
fi
VENV=${MAGVIT2_CUDA_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/magvit2/venv-cuda-${TORCH_CUDA//[^A-Za-z0-9.]/}}
case $VENV in /*) ;; *) VENV=$ROOT/$VENV ;; esac
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export MAX_JOBS=${MAX_JOBS:-2}
start=$SECONDS

echo "cuda-check: $(nvcc --version | tail -n 2 | head -n 1)"
if [ ! -x "$VENV/bin/python" ]; then
  mkdir -p "$(dirname "$VENV")"
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
fi
"$VENV/bin/pip" install -q "$TORCH_CUDA" numpy "setuptools>=64" wheel ninja
venv_done=$SECONDS

# setuptools reads build_base from DIST_EXTRA_CONFIG: build/cuda-check keeps the ninja objects for the next run.
mkdir -p "$ROOT/build/cuda-check"
printf '[build]\nbuild_base = %s\n' "$ROOT/build/cuda-check" >"$ROOT/build/cuda-check.cfg"
DIST_EXTRA_CONFIG="$ROOT/build/cuda-check.cfg" "$VENV/bin/pip" install -q --no-build-isolation "$ROOT"
build_done=$SECONDS

# Run from the venv folder: from the repo root, the source tree (no _C_cuda) would shadow the installed package.
(cd "$VENV" && "$VENV/bin/python" "$ROOT/.ci/cuda_check.py")
echo "cuda-check: passed (venv $((venv_done - start))s + build $((build_done - venv_done))s" \
  "+ checks $((SECONDS - build_done))s; total $((SECONDS - start))s)"
