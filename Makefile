# EDF cervical cytology nucleus segmentation: prep → train → infer.
# Every target that runs Python depends on the venv (.venv), created and filled by `make setup`.

PYTHON  ?= python3
VENV    ?= .venv
BIN      = $(VENV)/bin
STAMP    = $(VENV)/.installed

# Data: the built-in synthetic ISBI-style sample unless EDF_DIR points at the real ISBI 2014 Dataset/EDF.
SAMPLE_DIR ?= data/sample/EDF
EDF_DIR    ?= $(SAMPLE_DIR)
DATASET    ?= dataset/Tiled-EDF-Cervical-Cytology
PREP_FLAGS ?=
OVERWRITE  ?=
DEMO_DIR   ?= demo-output
WORKERS    ?=

overwrite_flag = $(if $(filter 1 yes true,$(OVERWRITE)),--overwrite,)
workers_flag   = $(if $(WORKERS),--workers $(WORKERS),)

.PHONY: help setup lint test prepare sample demo stats bench bench-prep train evaluate infer clean

help:
	@echo "make demo      set up, make the synthetic sample, prepare tiles, show dataset stats"
	@echo "make test      set up and run the test suite"
	@echo "make prepare   tile EDF_DIR (default: synthetic sample) into DATASET  [OVERWRITE=1] [PREP_FLAGS=...]"
	@echo "make stats     per-split table and chart of DATASET"
	@echo "make bench-prep  prep benchmarks (last line: one JSON object)"
	@echo "make lint      ruff"

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	PYTHONWARNINGS=ignore $(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check prep train infer tests bench

test: $(STAMP)
	$(BIN)/python -m pytest -q

# The synthetic sample is generated on first use (never committed).
$(SAMPLE_DIR)/EDF000.png: | $(STAMP)
	$(BIN)/prep synth --output $(SAMPLE_DIR) --overwrite

sample: $(SAMPLE_DIR)/EDF000.png

prepare: $(STAMP) $(if $(filter $(SAMPLE_DIR),$(EDF_DIR)),$(SAMPLE_DIR)/EDF000.png,)
	$(BIN)/prep run --input $(EDF_DIR) --output $(DATASET) $(overwrite_flag) $(workers_flag) $(PREP_FLAGS)

stats: $(STAMP)
	$(BIN)/prep stats $(DATASET)

demo: $(STAMP) $(SAMPLE_DIR)/EDF000.png
	$(BIN)/prep run --input $(SAMPLE_DIR) --output $(DEMO_DIR)/dataset --overwrite $(workers_flag) $(PREP_FLAGS)
	$(BIN)/prep stats $(DEMO_DIR)/dataset --plot $(DEMO_DIR)/dataset-stats.png
	@echo
	@echo "demo results:"
	@echo "  synthetic EDF sample   $(SAMPLE_DIR)/ (EDFnnn.png + EDFnnn_GT.png)"
	@echo "  tile dataset           $(DEMO_DIR)/dataset/{train,valid,test}/{images,masks}/"
	@echo "  tile list + provenance $(DEMO_DIR)/dataset/manifest.csv, $(DEMO_DIR)/dataset/prep.json"
	@echo "  dataset chart          $(DEMO_DIR)/dataset-stats.png"
	@echo "  (training, evaluation and full-size inference join the demo with issues #3 and #4)"

bench: bench-prep

bench-prep: $(STAMP)
	$(BIN)/python bench/bench_prep.py

train evaluate infer:
	@echo "make $@: not implemented yet (tracked in issues #3 and #4)" >&2; exit 1

clean:
	rm -rf $(DEMO_DIR) .pytest_cache .ruff_cache
