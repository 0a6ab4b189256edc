# Two commands do everything on a fresh machine:
#   make demo   create .venv if missing, install, synthesise a phantom, train, evaluate
#   make test   create .venv if missing, install, lint, type check, run the tests
# Both are idempotent: the install step runs again only when pyproject.toml or constraints.txt
# changes. Every pip install uses the pinned versions in constraints.txt (see DEVELOPERS.md).

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
TORCH_VERSION ?= 2.13.0
# Extra pip arguments for torch, e.g. --index-url https://download.pytorch.org/whl/cpu
TORCH_PIP_ARGS ?=
INSTALLED := $(VENV)/.installed
# The pinned set every install uses; `make lock-refresh CONSTRAINTS=` ignores it on purpose.
CONSTRAINTS ?= constraints.txt
PIN := $(if $(CONSTRAINTS),--constraint $(CONSTRAINTS))
PYTEST_ARGS ?=

.PHONY: demo test lint typecheck unit install radiomics pyradiomics clean lock lock-refresh

demo: $(INSTALLED)
	$(BIN)/thyroid-monai demo --out runs/demo

test: $(INSTALLED) lint typecheck unit

lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/hadolint docker/Dockerfile docker/mlflow.Dockerfile

typecheck: $(INSTALLED)
	$(BIN)/mypy

unit: $(INSTALLED)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

install: $(INSTALLED)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade $(PIN) pip setuptools wheel

# torch first, and only when missing: a plain `pip install torch` (or a dependency pulling it)
# would fetch a multi-GB CUDA build; torch==$(TORCH_VERSION) is a local CPU build here.
# pyradiomics 3.0.1 has no wheel for Python 3.11: it builds from source without build
# isolation once numpy, setuptools, wheel and versioneer are present (see DEVELOPERS.md).
# The tests exercise every extra (DICOM codecs, dataset readers, radiomics), so the development
# install has them all; pyradiomics is built first, the only way it installs (see DEVELOPERS.md).
$(INSTALLED): pyproject.toml $(CONSTRAINTS) | $(BIN)/python
	$(BIN)/python -c "import torch" 2>/dev/null || $(PIP) install --quiet $(PIN) $(TORCH_PIP_ARGS) torch==$(TORCH_VERSION)
	$(MAKE) --no-print-directory pyradiomics
	$(PIP) install --quiet $(PIN) -e ".[dev,dicom,datasets,radiomics,mtl]"
	touch $@

# Optional extra: pyradiomics for the radiomics targets (`pip install .[radiomics]` needs these flags).
radiomics: $(INSTALLED)

pyradiomics: | $(BIN)/python
	$(BIN)/python -c "import radiomics" 2>/dev/null || { \
	  $(PIP) install --quiet $(PIN) numpy setuptools wheel versioneer && \
	  $(PIP) install --quiet $(PIN) --no-build-isolation "pyradiomics==3.0.1"; }

# Rewrites constraints.txt from the current .venv (every package, the project itself left out).
lock: $(INSTALLED)
	{ sed -n '/^#/p' constraints.txt; \
	  $(PIP) freeze --all --exclude-editable | sed 's/^torch==$(TORCH_VERSION)+.*/torch==$(TORCH_VERSION)/'; \
	  } > constraints.txt.new && mv constraints.txt.new constraints.txt

# The deliberate refresh: newest versions the ranges in pyproject.toml allow, tested, then locked.
lock-refresh:
	rm -rf $(VENV)
	$(MAKE) --no-print-directory CONSTRAINTS= test
	$(MAKE) --no-print-directory CONSTRAINTS= lock

clean:
	rm -rf $(VENV) runs .mypy_cache .ruff_cache .pytest_cache
