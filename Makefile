# `make demo` and `make test` each set up everything they need on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast test-long lint bench clean

install: $(STAMP)

# torch and torchvision first, pinned: these builds lie on this machine's disk,
# and other torchvision builds fail to import beside this torch.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) scripts/demo.py

test: $(STAMP)
	$(PY) -m pytest

# The inner loop: everything but the slow tests (the torchvision zoo, big files).
test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow and not long"

# The team-scale reliability runs (issue #15): minutes each; .ci/run runs them after `make test`.
test-long: $(STAMP)
	$(PY) -m pytest -m long

bench: $(STAMP)
	$(PY) bench/run.py

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests scripts bench
	$(VENV)/bin/ruff format --check src tests scripts bench
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) demo-home build dist *.egg-info
