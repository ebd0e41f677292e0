# The two set-up commands of the README: `make demo` and `make test`. Both build the venv from nothing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint venv bench bench-dedup clean chromium cluster-test

venv: $(STAMP)

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]' 2>&1 | grep -v "^WARNING: Location" || true
	$(PY) -c "import apache_beam, PIL, imagehash, pyarrow, aiohttp, ijson, matplotlib, pytest, xdist, ruff, mypy"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m pipelines.ingest --demo --output demo-out
	$(PY) -m pipelines.export --input demo-out --output demo-out/export --format webdataset \
		--resize 224 --resize-mode center_crop --shard-size 16

# The report test renders OUT/report.html in headless Chromium (Debian's package, installed if missing).
chromium:
	sh scripts/ensure_chromium.sh

# Style, format and types of the code, configured in pyproject.toml. `make test` runs it first.
# ruff covers the tests and benches too; mypy the shipped packages.
LINT_PATHS := pipelines transforms deploy
lint: $(STAMP)
	$(PY) -m ruff check $(LINT_PATHS) tests bench
	$(PY) -m ruff format --check $(LINT_PATHS) tests bench
	$(PY) -m mypy $(LINT_PATHS)

# One pytest worker per core (pytest-xdist): the suite is ~150 real pipeline runs of a few seconds,
# each busy on about one core. A test file stays on one worker, so its module fixtures run once.
# At most 4 workers: each runs pipelines of ~0.5 GB with their own hash worker processes.
test: $(STAMP) chromium lint
	$(PY) -m pytest -q -n auto --maxprocesses 4 --dist loadfile tests

clean:
	rm -rf $(VENV) demo-out deploy/build

include deploy/deploy.mk
include bench/bench.mk

# Every job on an offline Dataflow-like cluster (deploy/cluster/, docs/dataflow.md): job service,
# two external workers in private mount namespaces, gs:// through the emulator. Needs root (unshare).
# The first run builds the worker environment (deploy/build/cluster/, reused after).
cluster-test: $(STAMP)
	rm -f deploy/build/cluster/cluster-report.json
	$(PY) -m pytest -q -p no:cacheprovider -m cluster tests/cluster; status=$$?; \
	  $(PY) -m deploy.cluster.cluster_check --print-report deploy/build/cluster/cluster-report.json; exit $$status
