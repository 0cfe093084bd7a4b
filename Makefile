# medvit: `make demo` runs the whole pipeline on synthetic data; `make test` runs ruff and the tests.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench

.PHONY: install test lint demo bench clean

MRICRON := /usr/share/mricron/templates/ch2.nii.gz

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet -c constraints.txt -e '.[dev,real,server,spark]'
	touch $(STAMP)

# The real MRI base (Colin27 T1, ch2.nii.gz) is a Debian package; without root, say how to get it.
$(MRICRON):
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  (apt-get install -y -qq mricron-data || (apt-get update -qq && apt-get install -y -qq mricron-data)) >/dev/null; \
	else echo "medvit: the real MRI base needs Debian's mricron-data: sudo apt-get install mricron-data"; fi

install: $(STAMP) $(MRICRON)

lint: $(STAMP) $(MRICRON)
	$(VENV)/bin/ruff check .

test: lint
	$(VENV)/bin/pytest -q

demo: $(STAMP) $(MRICRON)
	$(VENV)/bin/medvit demo --kind xray

# The bench extra (einops, for MONAI's ViT) on top of the usual install.
$(BENCH_STAMP): $(STAMP)
	$(PIP) install --quiet -c constraints.txt -e '.[dev,real,bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(PY) benchmarks/bench_vit.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache demo_out
