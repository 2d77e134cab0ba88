# chatgate: `make run` sets up and serves on the embedded default; `make test` sets up and runs every test.
SHELL := /bin/bash
VENV  := .venv
STAMP := $(VENV)/.chatgate-setup

.PHONY: setup run test lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/setup.sh console/package-lock.json $(wildcard console/src/*)
	bash scripts/setup.sh
	touch $@

run: setup
	$(VENV)/bin/chatgate migrate
	$(VENV)/bin/chatgate serve

test: setup
	bash scripts/test.sh

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check . && $(VENV)/bin/mypy && $(VENV)/bin/lint-imports

bench: setup
	$(VENV)/bin/python bench/engine.py

clean:
	rm -rf $(VENV) .chatgate console/node_modules src/chatgate/console/static
