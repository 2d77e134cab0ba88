# chatgate: `make run` sets up and serves on the embedded default; `make test` sets up and runs every test.
SHELL := /bin/bash
VENV  := .venv
STAMP := $(VENV)/.chatgate-setup

.PHONY: setup run test lint bench screenshots clean

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

# The browser tests again, saving their screenshots over the README's (docs/screenshots).
screenshots: setup
	bash scripts/system-deps.sh
	CHATGATE_SCREENSHOTS=docs/screenshots $(VENV)/bin/python -m pytest -q tests/e2e/test_console.py \
		tests/e2e/test_business.py tests/e2e/test_operations.py tests/e2e/test_email_accounts.py

bench: setup
	$(VENV)/bin/python bench/engine.py

clean:
	rm -rf $(VENV) .chatgate console/node_modules src/chatgate/console/static
