#!/usr/bin/env bash
# The project's checks, in order: style, types, layering, then the tests (unit, then a real server).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv

bash scripts/system-deps.sh
echo "==> ruff";          "$VENV/bin/ruff" check . && "$VENV/bin/ruff" format --check .
echo "==> mypy --strict"; "$VENV/bin/mypy"
echo "==> import layers"; "$VENV/bin/lint-imports"
echo "==> pytest";        "$VENV/bin/python" -m pytest "$@"
