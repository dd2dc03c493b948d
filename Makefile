# The two commands a new user needs: `make demo` and `make test`.
# Both create .venv and install what they need on a fresh machine.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check -q

# Debian packages the tests use: a real Prometheus (and promtool) and a
# real Chromium for the dashboard's browser test.
SYSTEM_COMMANDS := prometheus promtool chromium
SYSTEM_PACKAGES := prometheus chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test lint format bench clean system-deps

demo: $(VENV)/.installed
	$(BIN)/scanpipe demo

test: $(VENV)/.installed-dev system-deps
	$(BIN)/ruff format --check src tests bench
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy
	$(BIN)/pytest

lint: $(VENV)/.installed-dev
	$(BIN)/ruff format --check src tests bench
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy

format: $(VENV)/.installed-dev
	$(BIN)/ruff format src tests bench
	$(BIN)/ruff check --fix src tests bench

bench: $(VENV)/.installed-dev
	$(BIN)/python bench/queue_throughput.py
	$(BIN)/python bench/pipeline_overhead.py
	$(BIN)/python bench/scale_from_zero.py
	$(BIN)/python bench/engine_vs_nnunet.py

system-deps:
	@missing=""; for c in $(SYSTEM_COMMANDS); do \
		command -v $$c >/dev/null 2>&1 || missing="$$missing $$c"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages for:$$missing"; \
		$(SUDO) apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q \
			--no-install-recommends $(SYSTEM_PACKAGES); \
	fi

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(PIP) install --upgrade pip
	$(PIP) install -e .
	touch $@

# The tests cover the nnU-Net backend and the OpenVINO runtime too, so they
# install both extras (torch==2.13.0 is the CPU build these machines carry).
$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(PIP) install --upgrade pip
	$(PIP) install -e '.[dev,nnunet,openvino]'
	touch $(VENV)/.installed $@

clean:
	rm -rf $(VENV) runs build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
