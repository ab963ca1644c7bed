# Two commands do all set-up on a fresh machine:
#   make run   - install, then run the pipeline on the embedded synthetic demo cohort
#   make test  - install, then run the whole test suite
# Both are idempotent: the install step re-runs only when pyproject.toml changes.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export PATH := $(abspath $(VENV))/bin:$(PATH)
export GX_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1

.PHONY: install chromium run test test-fast lint bench clean gpu-prepare gpu-preflight \
	gpu-rehearsal gpu-install

install: $(STAMP) chromium

# headless Chromium renders report.html in the tests (Debian package `chromium`)
chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	      echo "installing chromium (apt-get)"; \
	      DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 || \
	      { apt-get update -q >/dev/null 2>&1 && \
	        DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null; }; \
	    else echo "warning: chromium missing; install Debian 'chromium' for the report test"; fi; }

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

run: install
	dvc repro
	@echo
	@echo "Pipeline finished on the SYNTHETIC demo cohort. Outputs:"
	@echo "  data/raw/demo/                     synthetic radiographs, labels.csv, boxes.csv"
	@echo "  data/interim/ingest/               image store, manifest.parquet, rejected.csv"
	@echo "  data/reports/ingest_summary.json   ingest counts by reason and split"
	@echo "  data/reports/validation/           validation.json + Great Expectations data docs"
	@echo "  data/models/localizer_{hand,r1,r2}/ localizer checkpoints + config.json + metrics"
	@echo "  data/processed/attend/{hand,r1,r2}/ regions.parquet, crop stores, review PNGs (r1: erased/)"
	@echo "  data/reports/attend/{hand,r1,r2}/   CAM overlays (overlays.png montage)"
	@echo "  data/reports/localization.json      demo boxes vs ground truth"
	@echo "  data/models/aggregator/            aggregator (regions from params) + excluded.csv"
	@echo "  data/reports/evaluate/             metrics.json, predictions.parquet, plots/ (dvc plots show)"
	@echo "  data/models/carpal/                carpal-only head (R1) for score's carpal bone age"
	@echo "  data/models/bundle/                end-to-end predictor (3 localizers + aggregator + carpal)"
	@echo "  mlflow/mlflow.db                   MLflow runs + registry: models:/boneage@champion"
	@echo "  data/reports/{register,promote}.json  registered version, promotion decision"
	@echo "Score a cohort:  .venv/bin/boneage score --cohort DIR --out DIR   (see README)"
	@python -m boneage.cli check-regions --truth data/raw/demo/boxes.csv --out data/reports/localization.json
	@python -c "import json; m = json.load(open('data/reports/evaluate/metrics.json')); \
	print(f\"aggregator {m['regions']} on {m['n']} test images: MAE {m['mae']:.1f} months \
	(train-mean predictor {m['mae_predict_train_mean']:.1f}), {m['interval']:.0%} interval coverage {m['coverage']:.0%}\")"
	@python -c "import json; r = json.load(open('data/reports/promote.json')); \
	print(f\"registry: boneage v{r['challenger_version']} {'promoted to champion' if r['promoted'] else 'not promoted'} ({r['reason']})\")"

test: install
	pytest

test-fast: install
	pytest -m "not slow"

lint: install
	ruff check boneage flows tests benchmarks profiles
	ruff format --check boneage flows tests benchmarks profiles

bench: install
	python benchmarks/ingest.py

# The GPU job (docs/gpu.md): build what a device call carries (.gpu/, ignored by git),
# check what it would transfer, rehearse the job on the CPU, install a returned result.
gpu-prepare: install
	python profiles/gpu/pack.py
	python profiles/gpu/wheels.py
	python profiles/gpu/weights.py
	python profiles/gpu/preflight.py

gpu-preflight: install
	python profiles/gpu/preflight.py

gpu-rehearsal: install
	BONEAGE_REQUIRE_DATA=1 pytest -m slow tests/test_gpu_job.py -k rehearsal -s

gpu-install: install
	@test -n "$(FILES)" || { echo "usage: make gpu-install FILES=<folder the device call's files came back to>"; exit 2; }
	python profiles/gpu/install.py $(FILES)

clean:
	rm -rf data/raw/demo data/interim/* data/processed/* data/reports/* .pytest_cache
