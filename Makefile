# poimatch: the same commands locally and in CI.
#   make run    set up (first time) and run the main job on generated sample data
#   make test   set up (first time) and run the test suite
#   make serve  the REST service on port 8004 (needs a champion model: make run)
SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.poimatch-setup
ENV   ?= local
# two pytest-xdist workers, one module each at a time (module fixtures are built once);
# TEST_WORKERS=0 runs the suite in this process
TEST_WORKERS ?= 2
SRC   := lib/poimatch jobs tests benchmarks deploy/ci notebooks

.PHONY: setup run serve test lint format typecheck security check ci clean

$(STAMP): pyproject.toml requirements.lock deploy/jvm/pom.xml scripts/setup.sh \
		scripts/build_jvm.sh $(wildcard deploy/jvm/src/io/poimatch/jvm/*.java)
	./scripts/setup.sh

setup: $(STAMP)

run: $(STAMP)
	./spark-submit.sh jobs/main.py --env $(ENV)

serve: $(STAMP)
	GX_ANALYTICS_ENABLED=false $(PY) -m poimatch.apps.service --env $(ENV)

test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=25

lint: $(STAMP)
	$(VENV)/bin/ruff check $(SRC)
	$(VENV)/bin/ruff format --check $(SRC)

format: $(STAMP)
	$(VENV)/bin/ruff check --fix $(SRC)
	$(VENV)/bin/ruff format $(SRC)

typecheck: $(STAMP)
	$(VENV)/bin/mypy

security: $(STAMP)
	$(VENV)/bin/bandit -q -c pyproject.toml -r lib/poimatch jobs

check: lint typecheck security

ci: check test

clean:
	rm -rf data/ci spark-warehouse metastore_db .pytest_cache .mypy_cache .ruff_cache
