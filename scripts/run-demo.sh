#!/usr/bin/env bash
# The whole chain on the embedded defaults: set up .venv, make synthetic EEG data if
# absent, then pull-detect-tune-register-email on examples/eeg-motor-imagery with the
# local executor, SQLite stores under TRAINCHAIN_HOME and the email outbox.
# Extra arguments go to `trainchain run` (for example --max-trials 5).
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup.sh

export TRAINCHAIN_HOME=${TRAINCHAIN_HOME:-$HOME/.trainchain}
data="$TRAINCHAIN_HOME/data/eeg-synth-medium"
if [ ! -d "$data" ]; then
  echo "==> making synthetic EEG data (medium difficulty) in $data"
  .venv/bin/trainchain data synth-eeg --out "$data" --difficulty medium --seed 0 >/dev/null
fi

echo "==> trainchain run examples/eeg-motor-imagery (state in $TRAINCHAIN_HOME)"
# the local executor, so the demo needs no Docker engine; --executor docker overrides it
.venv/bin/trainchain run examples/eeg-motor-imagery --data "$data" --executor local "$@"
