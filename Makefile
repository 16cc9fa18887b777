# EDF cervical cytology nucleus segmentation: prep → train → infer.
# Every target that runs Python depends on the venv (.venv), created and filled by `make setup`.

PYTHON  ?= python3
VENV    ?= .venv
BIN      = $(VENV)/bin
STAMP    = $(VENV)/.installed
PEER_STAMP = $(VENV)/.installed-peers

# Data: the built-in synthetic ISBI-style sample unless EDF_DIR points at the real ISBI 2014 Dataset/EDF.
SAMPLE_DIR ?= data/sample/EDF
EDF_DIR    ?= $(SAMPLE_DIR)
DATASET    ?= dataset/Tiled-EDF-Cervical-Cytology
PREP_FLAGS ?=
SYNTH_FLAGS ?=
OVERWRITE  ?=
DEMO_DIR   ?= demo-output
WORKERS    ?=
CONFIG     ?= configs/demo_cpu.config
TRAIN_FLAGS ?=
INPUT      ?=
GT         ?=
SPLIT      ?= test
INFER_FLAGS ?=

overwrite_flag = $(if $(filter 1 yes true,$(OVERWRITE)),--overwrite,)
workers_flag   = $(if $(WORKERS),--workers $(WORKERS),)
# bench-real/bench-folds pass PREP_FLAGS whenever it is given, even empty: PREP_FLAGS= turns their default
# pale-nucleus copies off.
bench_prep_flag = $(if $(filter command environment,$(firstword $(origin PREP_FLAGS))),--prep-flags '$(PREP_FLAGS)',)

.PHONY: help setup peers bench-peer lint test prepare sample demo stats bench bench-prep bench-train bench-infer bench-gpu bench-gpu-folds device-pack bench-real bench-folds bench-runs train evaluate summary infer clean

help:
	@echo "make demo      set up, make the synthetic sample, prepare tiles, train demo_cpu, evaluate"
	@echo "make test      set up and run the test suite"
	@echo "make prepare   tile EDF_DIR (default: synthetic sample) into DATASET  [OVERWRITE=1] [PREP_FLAGS=...]"
	@echo "make stats     per-split table and chart of DATASET"
	@echo "make train     train fit --config CONFIG (default configs/demo_cpu.config) [TRAIN_FLAGS=...]"
	@echo "make evaluate  train evaluate --config CONFIG: evaluation.csv beside the config"
	@echo "make summary   build the CONFIG model, print layers and parameter count"
	@echo "make infer     full-size masks of DATASET's test sources (or INPUT=… [GT=…]) with CONFIG's model"
	@echo "make bench-prep  prep benchmarks (last line: one JSON object)"
	@echo "make bench-train input pipeline vs in-memory, images/s, reference step time (last line: JSON)"
	@echo "make bench-infer stitching vs bare predict, overlap/TTA cost, 8192² peak RSS (last line: JSON)"
	@echo "make bench-gpu   reference model on a GPU, float32 vs mixed float16/bfloat16 (last line: JSON)"
	@echo "make bench-gpu-folds  bench and reference models on the whole-field folds, any Keras backend (GPU work)"
	@echo "make bench-real TRAIN_EDF=DIR TEST_EDF=DIR  train ≤15 min on CPU, score unseen images (last line: JSON)"
	@echo "make bench-folds [FIELDS=DIR | TILES=DIR] [FOLDS=5] [OUT=DIR [RESUME=1]]  bench-real on every fold (JSON)"
	@echo "make bench-peer TRAIN_EDF=DIR TEST_EDF=DIR  StarDist 2D beside our model, same budget and fields, one kept for its thresholds (JSON)"
	@echo "make bench-runs  every recorded fold run (tile and whole-field records): mean and spread per variant"
	@echo "make lint      ruff"

setup: $(STAMP)

# StarDist, the peer of make bench-peer (a bench-only extra; the tests of its path skip without it).
peers: $(PEER_STAMP)

$(PEER_STAMP): $(STAMP)
	PYTHONWARNINGS=ignore $(BIN)/python -m pip install --quiet -e '.[dev,peers]'
	touch $(PEER_STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	PYTHONWARNINGS=ignore $(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check prep train infer tests bench

# Two pytest-xdist workers, a test module each at a time (its fixtures built once): much of the suite is TensorFlow
# tracing in Python, one core per process: two of them on 2 cores took 0.57 of the serial time (docs/benchmarks.md).
# TEST_WORKERS=0 runs it serially in one process.
TEST_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadscope

# The synthetic sample is generated on first use (never committed).
$(SAMPLE_DIR)/SYN000.png: | $(STAMP)
	$(BIN)/prep synth --output $(SAMPLE_DIR) --overwrite $(SYNTH_FLAGS)

sample: $(SAMPLE_DIR)/SYN000.png

prepare: $(STAMP) $(if $(filter $(SAMPLE_DIR),$(EDF_DIR)),$(SAMPLE_DIR)/SYN000.png,)
	$(BIN)/prep run --input $(EDF_DIR) --output $(DATASET) $(overwrite_flag) $(workers_flag) $(PREP_FLAGS)

stats: $(STAMP)
	$(BIN)/prep stats $(DATASET)

# The demo keeps everything in DEMO_DIR, laid out like the reference project: its config beside its data. The
# copy gets the demo's folders appended (later sections win), so it works on its own: make infer CONFIG=….
DEMO_FOLDERS = '' '; the demo'"'"'s own folders, beside this file (later sections win)' \
	'[train]' 'images_dir = ./dataset/train/images' 'masks_dir = ./dataset/train/masks' 'model_dir = ./models' \
	'eval_dir = ./eval' 'epoch_change_infer_dir = ./epoch_change_infer' \
	'[valid]' 'images_dir = ./dataset/valid/images' 'masks_dir = ./dataset/valid/masks' \
	'[test]' 'images_dir = ./dataset/test/images' 'masks_dir = ./dataset/test/masks' \
	'[infer]' 'images_dir = ./dataset/test/images' 'output_dir = ./infer'
DEMO_FLAGS ?=

demo: $(STAMP) $(SAMPLE_DIR)/SYN000.png
	$(BIN)/prep run --input $(SAMPLE_DIR) --output $(DEMO_DIR)/dataset --overwrite $(workers_flag) $(PREP_FLAGS)
	$(BIN)/prep stats $(DEMO_DIR)/dataset --plot $(DEMO_DIR)/dataset-stats.png
	cp configs/demo_cpu.config $(DEMO_DIR)/train_eval_infer.config
	printf '%s\n' $(DEMO_FOLDERS) >> $(DEMO_DIR)/train_eval_infer.config
	$(BIN)/train fit --config $(DEMO_DIR)/train_eval_infer.config $(DEMO_FLAGS) --overwrite
	$(BIN)/train evaluate --config $(DEMO_DIR)/train_eval_infer.config $(DEMO_FLAGS) --overwrite
	$(BIN)/infer --config $(DEMO_DIR)/train_eval_infer.config $(DEMO_FLAGS) --dataset $(DEMO_DIR)/dataset \
		--split test --overwrite $(INFER_FLAGS)
	@echo
	@echo "demo results:"
	@echo "  synthetic EDF sample   $(SAMPLE_DIR)/ (SYNnnn.png + SYNnnn_GT.png)"
	@echo "  tile dataset           $(DEMO_DIR)/dataset/{train,valid,test}/{images,masks}/"
	@echo "  tile list + provenance $(DEMO_DIR)/dataset/manifest.csv, $(DEMO_DIR)/dataset/prep.json"
	@echo "  dataset chart          $(DEMO_DIR)/dataset-stats.png"
	@echo "  trained model          $(DEMO_DIR)/models/best.weights.h5, $(DEMO_DIR)/models/model.json (+ its config, logs/)"
	@echo "  training curves        $(DEMO_DIR)/eval/train_losses.png, train_metrics.png (+ CSVs, history.json)"
	@echo "  per-epoch predictions  $(DEMO_DIR)/epoch_change_infer/epoch_NNN.png (image | truth | prediction)"
	@echo "  test scores            $(DEMO_DIR)/evaluation.csv, $(DEMO_DIR)/evaluation_per_image.csv"
	@echo "  full-size predictions  $(DEMO_DIR)/infer/SYNnnn.png (mask), overlays/, predictions.csv, nuclei.csv,"
	@echo "                         labels/ (16-bit ids), geojson/ (QuPath), scores.csv: the test split's whole"
	@echo "                         source images, never seen in training"
	@echo
	@echo "predict your own images with this model (its folder describes itself: model.json):"
	@echo "  $(BIN)/infer --model $(DEMO_DIR)/models --input YOUR_FOLDER --output YOUR_OUTPUT"
	@echo "  (or: make infer CONFIG=$(DEMO_DIR)/train_eval_infer.config INPUT=YOUR_FOLDER)"

train: $(STAMP)
	$(BIN)/train fit --config $(CONFIG) $(TRAIN_FLAGS)

evaluate: $(STAMP)
	$(BIN)/train evaluate --config $(CONFIG) $(TRAIN_FLAGS)

summary: $(STAMP)
	$(BIN)/train summary --config $(CONFIG) $(TRAIN_FLAGS)

bench: bench-prep bench-train bench-infer

bench-prep: $(STAMP)
	$(BIN)/python bench/bench_prep.py

bench-train: $(STAMP)
	$(BIN)/python bench/bench_train.py

bench-infer: $(STAMP)
	$(BIN)/python bench/bench_infer.py

# GPU work (the reference model at 512²); runs on any Keras backend: KERAS_BACKEND=jax make bench-gpu.
# TILES=DIR: a folder with images/ and masks/ (default ../shared/data/edf-real/tiles).
bench-gpu: $(STAMP)
	$(BIN)/python bench/bench_gpu.py $(if $(TILES),--tiles $(TILES),)

# The whole-field folds on any Keras backend, numpy input (no tf.data): issue 29's GPU run. GPU_MODELS: --model
# specs separated by | (bench/bench_gpu_folds.py --help). On a lent GPU machine without TensorFlow: make device-pack here,
# then bash bench/device_folds.sh there (carry .device).
GPU_MODELS ?= configs/bench_cpu.config steps=5000|configs/edf_cervical.config seconds=45 folds=0,1,2 train.batch_size=8
bench-gpu-folds: $(STAMP)
	MODELS="$(GPU_MODELS)" FIELDS="$(FIELDS)" bash bench/device_folds.sh --local

# What bench/device_folds.sh needs on a machine that has JAX but neither Keras nor ../shared: the fields and the
# wheels of Keras (this venv's version) and the two packages it needs that such a machine lacks, in .device/.
device-pack: $(STAMP)
	rm -rf .device && mkdir -p .device/fields .device/whl
	cp $(FIELDS)/EDF*.png .device/fields/
	$(BIN)/pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
		-d .device/whl keras==$$($(BIN)/python -c 'import importlib.metadata as m; print(m.version("keras"))') namex optree
	@du -sh .device

# Real-data quality: TRAIN_EDF and TEST_EDF are ISBI-layout folders with disjoint source images.
# Leave-sources-out folds from the real tiles: $(BIN)/python bench/make_folds.py --tiles DIR --out DIR
bench-real: $(STAMP)
	@test -n "$(TRAIN_EDF)" -a -n "$(TEST_EDF)" || { echo "usage: make bench-real TRAIN_EDF=DIR TEST_EDF=DIR [OUT=DIR] [SYNTH=N] [VALID_ON=synth|real] [PREP_FLAGS='--fade-factors 0.3' | PREP_FLAGS=]" >&2; exit 2; }
	$(BIN)/python bench/bench_real.py --train-edf $(TRAIN_EDF) --test-edf $(TEST_EDF) $(if $(OUT),--out $(OUT),) \
		$(if $(SYNTH),--synth $(SYNTH),) $(if $(VALID_ON),--valid-on $(VALID_ON),) \
		$(bench_prep_flag)

# bench-real on every fold: of whole ISBI fields (FIELDS, default the 10 real fields in ../shared, GT as published;
# FOLDS=5: two fields held out per fold, about 80 minutes on 2 cores), or of reference-style TILES (FOLDS=6 there is
# leave-one-source-out); one line per fold, then one JSON object with per-field scores and the means.
# RESUME=1 with the stopped run's OUT (and its other settings) runs only the folds it had not finished;
# ONLY_FOLDS=3,4 runs those folds of the plan alone.
FIELDS ?= ../shared/data/isbi2014/EDF
bench-folds: $(STAMP) $(if $(filter 1 yes true,$(PEER)),$(PEER_STAMP),)
	$(BIN)/python bench/bench_folds.py $(if $(TILES),--tiles $(TILES),--fields $(FIELDS)) \
		$(if $(filter 1 yes true,$(PEER)),--peer,) \
		$(if $(FOLDS),--folds $(FOLDS),) $(if $(OUT),--out $(OUT),) $(if $(SYNTH),--synth $(SYNTH),) \
		$(if $(VALID_ON),--valid-on $(VALID_ON),) $(if $(filter 1 yes true,$(RESUME)),--resume,) \
		$(if $(ONLY_FOLDS),--only-folds $(ONLY_FOLDS),) $(bench_prep_flag)

# StarDist 2D beside our model on TRAIN_EDF → TEST_EDF, same budget and fields (one kept for its thresholds; ~30 min);
# PEER_ONLY=1 trains StarDist alone. make bench-folds PEER=1 runs both on every fold.
bench-peer: $(STAMP) $(PEER_STAMP)
	@test -n "$(TRAIN_EDF)" -a -n "$(TEST_EDF)" || { echo "usage: make bench-peer TRAIN_EDF=DIR TEST_EDF=DIR [OUT=DIR] [PEER_ONLY=1]" >&2; exit 2; }
	$(BIN)/python bench/bench_peer.py --train-edf $(TRAIN_EDF) --test-edf $(TEST_EDF) $(if $(OUT),--out $(OUT),) \
		$(if $(filter 1 yes true,$(PEER_ONLY)),--peer-only,)

# Every recorded fold run, summed up per variant (no training): the tile folds (bench/results/loso_runs.csv, the
# pale copies' runs also pooled), then the whole-field folds (bench/results/fields_runs.csv; record_run.py adds one).
bench-runs: $(STAMP)
	$(BIN)/python bench/loso_runs.py --pool 'pale copies'
	$(BIN)/python bench/loso_runs.py --runs bench/results/fields_runs.csv --line 0.93

# Default: the full-size source images of DATASET's test split, scored against their GT; or INPUT=file|dir [GT=dir].
MODEL      ?=
infer: $(STAMP)
	$(BIN)/infer $(if $(MODEL),--model $(MODEL),--config $(CONFIG)) $(if $(INPUT),--input $(INPUT) $(if $(GT),--gt $(GT),),--dataset $(DATASET) \
		--split $(SPLIT)) --overwrite $(INFER_FLAGS)

clean:
	rm -rf $(DEMO_DIR) .pytest_cache .ruff_cache
