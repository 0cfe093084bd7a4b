# medvit: `make demo` runs the whole pipeline on synthetic data; `make test` runs ruff and the tests.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: install test lint demo bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

test: lint
	$(VENV)/bin/pytest -q

demo: $(STAMP)
	$(VENV)/bin/medvit demo --kind xray

bench: $(STAMP)
	$(PY) benchmarks/bench_vit.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache demo_out
