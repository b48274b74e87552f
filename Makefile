# edge-agent: `make run` and `make test` are all a fresh Debian/Ubuntu machine needs.
SHELL := /bin/bash
PYTHON ?= python3
UV_VERSION := 0.13.9
VENV := .venv
EXTRAS ?= --extra dev
UV := $(shell command -v uv 2>/dev/null || echo .tools/uv/bin/uv)
export UV_PYTHON_DOWNLOADS := never

.PHONY: setup run test lint typecheck unit bench train train-posture clean

.tools/uv/bin/uv:
	@scripts/bootstrap.sh "$(PYTHON)" "$(UV_VERSION)"

$(VENV)/.synced: pyproject.toml uv.lock | $(if $(filter .tools/uv/bin/uv,$(UV)),.tools/uv/bin/uv)
	$(UV) sync --locked $(EXTRAS) --python "$(PYTHON)"
	@touch $@

## setup: create .venv with the locked dependencies (nothing else runs)
setup: $(VENV)/.synced

## run: start the daemon on its embedded default (emulated sensors, local broker)
run: setup
	@scripts/run-local.sh

## test: lint, type-check and the whole test suite
test: setup lint typecheck unit

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: setup
	$(VENV)/bin/mypy

unit: setup
	@scripts/ensure-test-deps.sh
	$(VENV)/bin/pytest

## bench: the performance contract as JSON
bench: setup
	$(VENV)/bin/edge-agent bench --json

## train: retrain the shipped IMU model (needs the `train` extra)
train:
	$(MAKE) setup EXTRAS="--extra dev --extra train"
	$(VENV)/bin/python scripts/train_imu_model.py

## train-posture: retrain the default posture model from UCI HAPT (HAPT=<dir holding RawData/>)
train-posture:
	@test -n "$(HAPT)" || { echo "usage: make train-posture HAPT=<unzipped UCI HAPT dir holding RawData/> (README: Models)"; exit 2; }
	$(MAKE) setup EXTRAS="--extra dev --extra train"
	$(VENV)/bin/python scripts/train_posture_model.py "$(HAPT)"

clean:
	rm -rf $(VENV) .tools .run .mypy_cache .ruff_cache .pytest_cache
