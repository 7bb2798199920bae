#!/usr/bin/env bash
# The project's test command: set-up, then lint, type-check and the whole test suite.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
MESHCONFORM_SETUP_BROWSER=1 source "$repo/scripts/setup.sh"
cd "$repo"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/lint-imports --no-cache
.venv/bin/pytest "$@"
