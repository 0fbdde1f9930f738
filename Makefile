# Two commands on a fresh machine with Python 3.11+: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch (on this project's CI machines it is already on disk); on GPU hosts
# install your own CUDA build first, or run `make TORCH=torch setup`.
TORCH ?= torch==2.13.0
SAMPLE_ROWS ?= 5000

.PHONY: setup demo test test-fast bench clean

setup: $(VENV)/.ready

$(VENV)/.ready: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

demo: setup
	$(PY) -m ingest.synth Data/all_kmers.npy --rows $(SAMPLE_ROWS) --seed 0
	$(PY) -m ingest Data/all_kmers.npy Data/kmers.zarr --overwrite

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

bench: setup
	$(PY) benchmarks/ingest.py

clean:
	rm -rf Data/all_kmers.npy Data/all_kmers_labels.npy Data/kmers.zarr
