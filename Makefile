# Two commands do all set-up on a fresh machine (Python >= 3.10 and a C++20 compiler):
#   make demo   venv + torch + build + the main job on the embedded default data
#   make test   the same set-up, then the tests and a smoke run of the benchmarks (what CI runs: .ci/run), then
#               the CUDA compile-and-link check where nvcc is on PATH (.ci/cuda_build_check.sh; prints a skip otherwise)
# `make bench` runs the benchmarks at full size (MAGVIT2_BENCH_FULL=1; needs ~14 GB RAM for the naive baseline).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH ?= $(shell sed -n '/^\[tool\.magvit2\]/,/^\[/s/^torch *= *"\(.*\)"$$/\1/p' pyproject.toml)
export MAX_JOBS ?= 2

.PHONY: setup demo test cuda-check bench lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# --no-build-isolation: the extension compiles against the torch installed here (see README, Install).
setup: $(BIN)/python
	$(BIN)/pip install -q "$(TORCH)" numpy setuptools wheel ninja
	$(BIN)/pip install -q --no-build-isolation -e ".[test]"

demo: setup
	$(BIN)/magvit2 info
	$(BIN)/magvit2 demo --out demo-out

test: setup
	$(BIN)/python -m pytest tests
	$(BIN)/python -m pytest benchmarks --benchmark-disable -q
	.ci/cuda_build_check.sh

# Builds magvit2._C_cuda against the torch-cuda of pyproject.toml in a cached venv (~/.cache/magvit2) and checks that
# it loads and registers every op for CUDA; no GPU needed. Skipped without nvcc.
cuda-check:
	.ci/cuda_build_check.sh

bench: setup
	MAGVIT2_BENCH_FULL=1 $(BIN)/python -m pytest benchmarks --benchmark-enable

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf build build-cmake .benchmarks magvit2/_C*.so *.egg-info demo-out
