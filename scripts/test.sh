#!/usr/bin/env bash
# Sets up a virtual environment (.venv) with the pinned CPU stack, lints, and runs the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q -c constraints.txt -e ".[test]"
.venv/bin/ruff check .
.venv/bin/python -m pytest "$@"
