#!/usr/bin/env bash
# Set up .venv with the test tools, then lint, type-check and run the test suite.
# Extra arguments go to pytest (for example -m "not slow" for the fast tier).
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup.sh --dev

echo "==> ruff"
.venv/bin/ruff check src tests benchmarks examples
.venv/bin/ruff format --check src tests benchmarks examples
echo "==> mypy (strict, on the package)"
.venv/bin/mypy
echo "==> pytest"
.venv/bin/pytest "$@"
