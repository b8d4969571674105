# Slipway developer entry points. The two that matter on a fresh machine:
#   make demo   set everything up and run the demo on the local control plane
#   make test   lint + every test tier (unit, control plane, runtimes)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.slipway-stamp
PYTEST_ARGS ?=

.PHONY: setup control-plane demo test lint unit integration runtimes-test crds bench clean dev-up dev-down

# Idempotent: reinstalls only when pyproject.toml changes.
setup: $(STAMP)
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@sha256sum pyproject.toml > $(STAMP)

control-plane:
	bash hack/build-control-plane.sh

demo: setup control-plane
	$(VENV)/bin/slipway dev demo

dev-up: setup control-plane
	$(VENV)/bin/slipway dev up

dev-down: setup
	$(VENV)/bin/slipway dev down

crds: setup
	$(VENV)/bin/slipway crds

lint: setup
	$(VENV)/bin/ruff check operator tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/slipway crds --check

unit: setup
	$(VENV)/bin/pytest -m "not cluster" -q $(PYTEST_ARGS)

integration: setup control-plane
	$(VENV)/bin/pytest -m cluster -q $(PYTEST_ARGS)

runtimes-test:
	$(MAKE) -C runtimes test

test: lint control-plane runtimes-test
	$(VENV)/bin/pytest -q -ra $(PYTEST_ARGS)

# Figures are printed and saved as JSON (bench-*.json, not tracked). bench.scale builds
# Kubeflow's training-operator on first use (a few minutes, cached); SCALE_ARGS to shrink it.
bench: setup control-plane
	$(PY) -m bench.run --out bench-run.json
	$(PY) -m bench.scale --out bench-scale.json $(SCALE_ARGS)

clean:
	rm -rf $(VENV) runtimes/.venv .pytest_cache .mypy_cache .ruff_cache
