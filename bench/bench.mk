# `make bench` and friends: img2dataset 1.47 against our ingest on one generated corpus served by
# nginx on loopback (bench/README.md). Include it at the END of the Makefile (`include bench/bench.mk`):
# it uses the Makefile's PYTHON, VENV, PY and STAMP; the defaults below only serve a standalone
# `make -f bench/bench.mk`.
PYTHON ?= python3
VENV ?= .venv
PY ?= $(VENV)/bin/python
STAMP ?= $(VENV)/.installed

# The peer lives apart: img2dataset's dependency pins conflict with Beam's.
I2D_VENV ?= .venv-img2dataset
I2D_STAMP := $(I2D_VENV)/.installed
BENCH_STAMP := $(VENV)/.bench-installed
# Extra options: BENCH_ARGS for run_bench.py (e.g. --count 10000 --repeat 3),
# BENCH_OURS_ARGS for our ingest (e.g. --direct_num_workers=2), space-separated.
BENCH_ARGS ?=
BENCH_OURS_ARGS ?=

.PHONY: bench bench-sweep bench-floor bench-venvs bench-nginx

bench-venvs: $(I2D_STAMP) $(BENCH_STAMP)

$(I2D_STAMP): bench/requirements-img2dataset.txt
	$(PYTHON) -m venv $(I2D_VENV)
	$(I2D_VENV)/bin/python -m pip install -q --disable-pip-version-check --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
	$(I2D_VENV)/bin/python -m pip install -q --disable-pip-version-check -r bench/requirements-img2dataset.txt 2>&1 | grep -v "^WARNING: Location" || true
	$(I2D_VENV)/bin/python -c "import img2dataset"
	touch $@

# psutil (tree sampling) and py-spy (profiling) in the project venv: the `bench` extra of setup.py.
$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[bench]' 2>&1 | grep -v "^WARNING: Location" || true
	$(PY) -c "import psutil"
	touch $@

# nginx from Debian's packages; apt-get update only when the plain install fails.
bench-nginx:
	@command -v nginx >/dev/null 2>&1 || test -x /usr/sbin/nginx || \
		apt-get install -y -q nginx || (apt-get update -q && apt-get install -y -q nginx)

bench: bench-venvs bench-nginx
	$(PY) bench/run_bench.py --peer-python $(I2D_VENV)/bin/python --our-python $(PY) \
		$(BENCH_ARGS) $(addprefix --ours-arg=,$(BENCH_OURS_ARGS))

# img2dataset's processes x threads x shard size on this machine (how PEER_BEST was chosen).
bench-sweep: bench-venvs bench-nginx
	$(PY) bench/run_bench.py --peer-python $(I2D_VENV)/bin/python --sweep --repeat 2 $(BENCH_ARGS)

bench-floor: $(BENCH_STAMP)
	$(PY) bench/make_corpus.py
	$(PY) bench/cpu_floor.py --sample 0 --json bench/work/cpu_floor.json

# ---- the dedup stage (make bench-dedup) ----------------------------------------------------------
BENCH_VENV ?= .venv-bench
DEDUP_BENCH_STAMP := $(BENCH_VENV)/.installed
BENCH_DEDUP_ARGS ?= --wait-quiet 120

.PHONY: bench-dedup bench-venv bench-dedup-calibrate bench-dedup-quality

# imagededup for the comparison, in its own venv: its PyPI metadata pulls torch/torchvision
# (GBs) for CNN features its hash search never touches, so it is installed --no-deps with only
# what hashing + search import (bench/requirements-bench.txt); see bench/imagededup_run.py.
bench-venv: $(DEDUP_BENCH_STAMP)

$(DEDUP_BENCH_STAMP): bench/requirements-bench.txt
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install -q --disable-pip-version-check --no-deps imagededup==0.3.3.post2 2>&1 | grep -v "^WARNING: Location" || true
	$(BENCH_VENV)/bin/pip install -q --disable-pip-version-check -r bench/requirements-bench.txt 2>&1 | grep -v "^WARNING: Location" || true
	$(BENCH_VENV)/bin/python -c "import brute_force_cython_ext, pywt, sklearn, tqdm, imagehash, skimage"
	touch $@

# ~10 min on 2 cores: Dedup at 100K/300K/1M (+ 1M pHash-only), imagededup at 10K/20K.
bench-dedup: $(STAMP) $(DEDUP_BENCH_STAMP)
	$(PY) -m bench.bench_dedup $(BENCH_DEDUP_ARGS)

# Where the default thresholds come from (real photos shipped with scikit-image), ~5 s.
bench-dedup-calibrate: $(DEDUP_BENCH_STAMP)
	$(BENCH_VENV)/bin/python -m bench.calibrate_thresholds

# The standalone dedup job against faiss's IndexBinaryMultiHash on the same hashes, side by side
# (bench/bench_dedup_job.py): wall and peak RSS of each process tree. faiss-cpu: the bench extra.
BENCH_DEDUP_JOB_ARGS ?= --sizes 1000000
.PHONY: bench-dedup-job
bench-dedup-job: $(BENCH_STAMP)
	$(PY) -m bench.bench_dedup_job $(BENCH_DEDUP_JOB_ARGS)

# ---- the export stage (make bench-export) ---------------------------------------------------------
# Export throughput (images/s and CPU ms/image), no resize and a 256 px resize, against img2dataset's
# Resizer + WebDataset writer on the same corpus files in the same run (bench/bench_export.py).
BENCH_EXPORT_ARGS ?= --count 1000 --repeat 2

.PHONY: bench-export

bench-export: $(STAMP) $(I2D_STAMP)
	$(PY) -m bench.bench_export --peer-python $(I2D_VENV)/bin/python $(BENCH_EXPORT_ARGS)

# Near-duplicate quality on real photographs (issue 14, docs/duplicates.md): tiles of the photos
# inside the scikit-image / scikit-learn wheels, copies by everyday edits, served on loopback as
# CC3M + CC12M manifests, ingested with default options and with --views none, and imagededup's
# PHash on the same files. ~5-10 min on 2 cores. BENCH_QUALITY_ARGS: e.g. --max-photos 5.
BENCH_QUALITY_ARGS ?=
QUALITY_STAMP := $(VENV)/.quality-installed

# The photos come from these wheels (the `bench` extra); a venv made before they joined it gets them here.
$(QUALITY_STAMP): $(BENCH_STAMP)
	$(PY) -c "import skimage, sklearn" 2>/dev/null || $(PY) -m pip install -q --disable-pip-version-check \
		"scikit-image>=0.22" "scikit-learn>=1.3" 2>&1 | grep -v "^WARNING: Location" || true
	$(PY) -c "import skimage, sklearn"
	touch $@

bench-dedup-quality: $(QUALITY_STAMP) $(DEDUP_BENCH_STAMP)
	$(PY) -m bench.bench_dedup_quality $(BENCH_QUALITY_ARGS)
