# Benchmarks of the dedup stage. Included from the Makefile (`include bench/bench.mk`), which
# defines PYTHON, PY and STAMP.
BENCH_VENV ?= .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.installed
BENCH_DEDUP_ARGS ?= --wait-quiet 120

.PHONY: bench-dedup bench-venv bench-dedup-calibrate

# imagededup for the comparison, in its own venv: its PyPI metadata pulls torch/torchvision
# (GBs) for CNN features its hash search never touches, so it is installed --no-deps with only
# what hashing + search import (bench/requirements-bench.txt); see bench/imagededup_run.py.
bench-venv: $(BENCH_STAMP)

$(BENCH_STAMP): bench/requirements-bench.txt
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install -q --disable-pip-version-check --no-deps imagededup==0.3.3.post2 2>&1 | grep -v "^WARNING: Location" || true
	$(BENCH_VENV)/bin/pip install -q --disable-pip-version-check -r bench/requirements-bench.txt 2>&1 | grep -v "^WARNING: Location" || true
	$(BENCH_VENV)/bin/python -c "import brute_force_cython_ext, pywt, sklearn, tqdm, imagehash, skimage"
	touch $@

# ~10 min on 2 cores: Dedup at 100K/300K/1M (+ 1M pHash-only), imagededup at 10K/20K.
bench-dedup: $(STAMP) $(BENCH_STAMP)
	$(PY) -m bench.bench_dedup $(BENCH_DEDUP_ARGS)

# Where the default thresholds come from (real photos shipped with scikit-image), ~5 s.
bench-dedup-calibrate: $(BENCH_STAMP)
	$(BENCH_VENV)/bin/python -m bench.calibrate_thresholds
