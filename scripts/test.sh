#!/usr/bin/env bash
# Set up .venv with the test tools, then check the import layers, lint, check dependencies
# and dead code, type-check and run the test suite.
# Extra arguments go to pytest (for example -m "not slow" for the fast tier).
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup.sh --dev

echo "==> ruff"
.venv/bin/ruff check src tests benchmarks examples
.venv/bin/ruff format --check src tests benchmarks examples
echo "==> import-linter (imports go down the layers; pyproject.toml's contracts)"
.venv/bin/lint-imports
echo "==> deptry (declared against imported dependencies, in src/)"
.venv/bin/deptry src
echo "==> vulture (dead code; vulture_whitelist.py names what frameworks call)"
.venv/bin/vulture
echo "==> mypy (strict, on the package)"
.venv/bin/mypy
echo "==> pytest"
.venv/bin/pytest "$@"
