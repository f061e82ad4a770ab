# torchrl_seer — every target creates .venv on first use and installs what it needs.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
comma := ,
# Rendering DMC pixels without a GPU goes through Mesa EGL.
export MUJOCO_GL ?= egl
export PYOPENGL_PLATFORM ?= egl

# CPU-only machines can take torch from the PyTorch CPU wheel index (no CUDA libraries), e.g.
#   make test TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=

.PHONY: help sysdeps venv install install-examples install-dev install-docs test test-all lint format demo bench docs clean

help:  ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-17s %s\n", $$1, $$2}'

# Mesa's EGL (software rendering for dm_control) is usually present; when it is not, this
# installs it with apt-get (needs root). Nothing is installed when libEGL_mesa is found.
sysdeps:  ## system libraries for headless MuJoCo rendering (apt, only when missing)
	@if ! ldconfig -p | grep -q libEGL_mesa; then \
		echo "installing Mesa EGL for headless MuJoCo rendering"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libegl1 libegl-mesa0 libgl1-mesa-dri >/dev/null; \
	fi

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel
	$(if $(TORCH_INDEX),$(PIP) install -q --index-url $(TORCH_INDEX) "torch>=2.15$(comma)<2.16")

# One stamp per extras set: reinstall when pyproject.toml changes.
$(VENV)/.stamp-base: pyproject.toml | $(PY)
	$(PIP) install -q -e .
	@touch $@
$(VENV)/.stamp-examples: pyproject.toml | $(PY)
	$(PIP) install -q -e ".[examples]"
	@touch $@ $(VENV)/.stamp-base
$(VENV)/.stamp-dev: pyproject.toml | $(PY)
	$(PIP) install -q -e ".[dev]"
	@touch $@ $(VENV)/.stamp-examples $(VENV)/.stamp-base
$(VENV)/.stamp-docs: pyproject.toml | $(PY)
	$(PIP) install -q -e ".[dev,docs]"
	@touch $@ $(VENV)/.stamp-dev $(VENV)/.stamp-examples $(VENV)/.stamp-base

venv: $(PY)  ## create .venv
install: $(VENV)/.stamp-base  ## install the package (core dependencies only) into .venv
install-examples: sysdeps $(VENV)/.stamp-examples  ## + Atari, DMC and what the recipes need
install-dev: sysdeps $(VENV)/.stamp-dev  ## + test and lint tools (the tests run the recipes)
install-docs: $(VENV)/.stamp-docs  ## + the docs toolchain

test: install-dev  ## run the test suite (fast; slow tests excluded)
	$(PY) -m pytest -m "not slow" -n 2 --timeout 600 -q --durations=10

test-all: install-dev  ## run every test, slow ones included
	$(PY) -m pytest -n 2 --timeout 1200 -q

lint: install-dev  ## ruff check + ruff format --check + mypy
	$(PY) -m ruff check torchrl_seer tests examples seer_benchmarks
	$(PY) -m ruff format --check torchrl_seer tests examples seer_benchmarks
	$(PY) -m mypy

format: install-dev  ## apply ruff fixes and formatting
	$(PY) -m ruff check --fix torchrl_seer tests examples seer_benchmarks
	$(PY) -m ruff format torchrl_seer tests examples seer_benchmarks

demo: install-examples  ## run the composed Atari DQN recipe on CPU (demo budget) and print where its report is
	OMP_NUM_THREADS=1 $(PY) examples/composed_dqn_atari.py --config-name composed_dqn_atari_demo

bench: install-dev  ## run the benchmarks and rewrite docs/benchmarks*.md
	$(PY) -m seer_benchmarks.run_all

docs: install-docs  ## build the docs with warnings as errors
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

clean:  ## remove build outputs (keeps .venv)
	rm -rf site build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache runs
