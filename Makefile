# Two commands do all the setup on a fresh machine:  `make demo` (the main job) and `make test`.
# Both build the virtual environment first if it is missing or older than pyproject.toml.
PYTHON ?= python3
VENV ?= .venv
# A CPU build of PyTorch, installed before the package so that its `torch>=2.2` requirement does
# not pull a multi-GB CUDA build. GPU users: `make TORCH=torch` (or any pip spec) keeps pip's choice.
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: demo test lint bench clean

demo: $(VENV)/.installed
	$(BIN)/scaler search --space search_spaces/lpsnet_demo.yaml --out results/demo

test: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/bench_models.py --threads 2 --input 512x1024 --repeats 30 --out benchmarks/results/models_cpu

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
