#!/usr/bin/env bash
# Make .venv (if missing) and install the pinned requirements and trainchain into it.
# Idempotent: a second run only checks that the pins are already satisfied.
# Usage: scripts/setup.sh [--dev | --tensorflow]
#   --tensorflow  adds TensorFlow (the CNN family on the host: --executor local, held-out
#                 comparison of Keras champions, serving them); about 1.3 GB
#   --dev         adds TensorFlow and the test and lint tools
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
if ! command -v "$PYTHON" >/dev/null 2>&1; then
  echo "error: $PYTHON not found; trainchain needs Python 3.11 (set PYTHON=/path/to/python3.11)" >&2
  exit 1
fi

case "${1:-}" in
  "") reqs=requirements.txt ;;
  --dev) reqs=requirements-dev.txt ;;
  --tensorflow) reqs=requirements-tensorflow.txt ;;
  *) echo "usage: scripts/setup.sh [--dev | --tensorflow] (got ${1})" >&2; exit 2 ;;
esac

if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv with $("$PYTHON" --version)"
  "$PYTHON" -m venv .venv
fi

# Reinstall only when the pins or the package metadata changed since the last install.
stamp=.venv/.trainchain-installed
want=$(cat "$reqs" requirements.txt requirements-tensorflow.txt pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)-$reqs
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "==> installing pinned requirements ($reqs); the first time takes a few minutes"
  pip_install() {
    # A machine-wide pip.conf may name local indexes that do not exist; pip then warns
    # once per package. Those lines are noise, every other line of pip's is kept.
    .venv/bin/python -m pip install --quiet --disable-pip-version-check "$@" \
      2> >(grep -v "^WARNING: Location 'file:" >&2)
  }
  # setuptools below 81: Jenkins Job Builder 6.5 imports pkg_resources, which 81 removed
  pip_install --upgrade "pip==26.3" "setuptools==80.10.2" "wheel==0.48.0"
  pip_install -r "$reqs"
  pip_install --no-deps --no-build-isolation -e .
  echo "$want" > "$stamp"
else
  echo "==> .venv is up to date"
fi
