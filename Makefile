# FleetMQ developer and CI commands. `make test` is what .ci/run and the README call.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

CARGO ?= cargo
# The Python virtual environment of the integration tests (scripts/install-test-deps.sh).
VENV ?= $(or $(FLEETMQ_VENV),.venv)
PYTHON := $(VENV)/bin/python
# Seconds the codec fuzzer runs: short and fixed in `make test`, longer by hand.
FUZZ_SECONDS ?= 300
FUZZ_CI_SECONDS := 60
# Extra pytest arguments, e.g. `make pytest PYTEST_ARGS='-k retained -x'`.
PYTEST_ARGS ?=

export PYTHONDONTWRITEBYTECODE := 1
# A CI run builds once from nothing: incremental caches would only double the disk it needs.
ifeq ($(CI),true)
export CARGO_INCREMENTAL := 0
endif

.PHONY: help run build release test test-deps fmt fmt-check clippy cargo-test fuzz pytest kafka-start kafka-stop

help:
	@echo "make run        start a node with embedded defaults (MQTT on :1883, data in ./data)"
	@echo "make build      build the workspace (debug)"
	@echo "make release    build the fleetmq binary (release)"
	@echo "make test       the whole suite: install test deps, build, fmt, clippy, cargo test"
	@echo "                (with Apache Kafka running for the bridge tests),"
	@echo "                $(FUZZ_CI_SECONDS) s of codec fuzzing, Python integration tests"
	@echo "make fmt        format the code;  make clippy: lints with warnings as errors"
	@echo "make fuzz       fuzz the codec for FUZZ_SECONDS (default $(FUZZ_SECONDS))"
	@echo "make pytest     only the Python integration tests (needs a built binary)"

run:
	$(CARGO) run --release -p fleetmq -- serve

build:
	$(CARGO) build --workspace

release:
	$(CARGO) build --release -p fleetmq

# Apache Kafka (deploy/kafka/kafka.sh) runs for the Kafka bridge tests and is stopped
# afterwards, whether they pass or not.
test: test-deps
	$(CARGO) build --workspace --all-targets
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	bash deploy/kafka/kafka.sh start
	status=0; $(CARGO) test --workspace || status=$$?; bash deploy/kafka/kafka.sh stop; exit $$status
	bash crates/codec/fuzz/run.sh $(FUZZ_CI_SECONDS)
	$(MAKE) --no-print-directory pytest

test-deps:
	bash scripts/install-test-deps.sh

fmt:
	$(CARGO) fmt --all

fmt-check:
	$(CARGO) fmt --all --check

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

cargo-test:
	$(CARGO) test --workspace

kafka-start:
	bash deploy/kafka/kafka.sh start

kafka-stop:
	bash deploy/kafka/kafka.sh stop

fuzz:
	bash crates/codec/fuzz/run.sh $(FUZZ_SECONDS)

# pytest exits 5 when it ran no test: make treats it, like any non-zero status, as a failure.
# With CI=true, tests/python/conftest.py turns every skip into a failure.
pytest: test-deps
	@test -x "$(PYTHON)" || { echo "missing $(PYTHON): run make test-deps" >&2; exit 1; }
	$(PYTHON) -m pytest -p no:cacheprovider tests/python $(PYTEST_ARGS)
