# Two commands on a fresh machine with Python 3.11+: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch (on this project's CI machines it is already on disk); on GPU hosts
# install your own CUDA build first, or run `make TORCH=torch setup`.
TORCH ?= torch==2.13.0
SAMPLE_ROWS ?= 5000
DEMO_EPOCHS ?= 15
RUN ?= runs/demo
# Test workers (pytest-xdist, one test module each): run serially the suite leaves a third of two
# cores idle while its tests wait on the processes they start. On an idle 2-core machine
# (2026-12-03): 3 workers 7 min 36 s, 2 workers 7 min 49 s, serial 10.5-13 min; 6 min 57 s on 3
# workers once the tests that only need a finished run trained it in their own process.
TEST_WORKERS ?= 3

.PHONY: setup demo test test-fast bench gpu-wheels clean

setup: $(VENV)/.ready

$(VENV)/.ready: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

# synth sample -> ingest -> verify -> 2-process DDP training (gloo on CPU) -> latents -> kNN on the genomes -> report
demo: setup
	$(PY) -m ingest.synth Data/all_kmers.npy --rows $(SAMPLE_ROWS) --seed 0
	$(PY) -m ingest Data/all_kmers.npy Data/kmers.zarr --chunk-rows 512 --labels Data/all_kmers_labels.npy --overwrite
	$(PY) -m ingest --verify Data/kmers.zarr
	rm -rf $(RUN)
	OMP_NUM_THREADS=1 $(PY) -m train.launch --standalone --nproc_per_node=2 -m train \
		--data Data/kmers.zarr --out $(RUN) --epochs $(DEMO_EPOCHS) --batch-size 128 --workers 1
	$(PY) -m train.encode --checkpoint $(RUN)/vae_multi_encoder_best.pt --data Data/kmers.zarr \
		--out $(RUN)/latents.zarr --overwrite
	@$(PY) -c "import json; b = [h for h in json.load(open('$(RUN)/history.json')) if h['best']][-1]; print(f\"every row's latents from the best epoch's encoder (epoch {b['epoch']}, vae_multi_encoder_best.pt):\")"
	$(PY) -m train.evaluate $(RUN)/latents.zarr --labels Data/all_kmers_labels.npy --store Data/kmers.zarr
	@$(PY) -c "import json; h = json.load(open('$(RUN)/history.json'))[-1]; print(f\"latent metrics of the last epoch (epoch {h['epoch']}, latent sample of the store's rows): active units {h['latent_active_units']}, distance Spearman {h['latent_spearman']:.3f}, kNN {h['latent_knn']:.3f}\")"
	$(PY) -m train.report $(RUN)
	@echo "kNN accuracy above: the share of rows whose 5 nearest neighbours vote for the row's own genome, in the"
	@echo "VAE's 256 latent dimensions (latents) and in the 2,772 CLR columns it encodes (CLR input). Latents near the"
	@echo "input's figure keep what tells the genomes apart in 11 times fewer numbers; the gap is what the compression"
	@echo "lost. These synthetic genomes differ in GC and are easy; real genomes: docs/experiments.md."

test: setup
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

test-fast: setup
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder -m "not slow"

bench: setup
	$(PY) benchmarks/ingest.py

# Wheels a GPU host with Python 3.12 and its own torch lacks (zarr, numcodecs, dask and their
# needs), for `bash benchmarks/gpu_check.sh` there with .whl/ carried; see docs/benchmarks.md.
GPU_WHEELS ?= zarr numcodecs donfig google-crc32c msgspec dask partd locket
gpu-wheels:
	rm -rf .whl && mkdir -p .whl
	$(PYTHON) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl $(GPU_WHEELS)

clean:
	rm -rf Data/all_kmers.npy Data/all_kmers_labels.npy Data/kmers.zarr runs/demo
