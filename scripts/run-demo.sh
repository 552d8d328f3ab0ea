#!/usr/bin/env bash
# The whole chain on the embedded defaults: set up .venv, make synthetic EEG data if
# absent, then pull-detect-tune-register-email on examples/eeg-motor-imagery with the
# local executor, SQLite stores under TRAINCHAIN_HOME and the email outbox; then serve
# the champion (`trainchain serve` on 127.0.0.1:${TRAINCHAIN_DEMO_PORT:-5005}),
# classify one epoch with curl, and stop the service.
# Extra arguments go to `trainchain run` (for example --max-trials 5).
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup.sh

export TRAINCHAIN_HOME=${TRAINCHAIN_HOME:-$HOME/.trainchain}
data="$TRAINCHAIN_HOME/data/eeg-synth-medium-288"
if [ ! -d "$data" ]; then
  echo "==> making synthetic EEG data (medium difficulty, 288 cues) in $data"
  .venv/bin/trainchain data synth-eeg --out "$data" --difficulty medium --seed 0 >/dev/null
fi

echo "==> trainchain run examples/eeg-motor-imagery (state in $TRAINCHAIN_HOME)"
# the local executor, so the demo needs no Docker engine; --executor docker overrides it
.venv/bin/trainchain run examples/eeg-motor-imagery --data "$data" --executor local "$@"

# --- the champion over HTTP ---------------------------------------------------------
model=eeg-motor-imagery
port=${TRAINCHAIN_DEMO_PORT:-5005}
url="http://127.0.0.1:$port"
log="$TRAINCHAIN_HOME/serve-demo.log"
if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
  echo "error: something already listens on port $port; set TRAINCHAIN_DEMO_PORT to a free port" >&2
  exit 1
fi
echo "==> trainchain serve --model $model --port $port (log: $log)"
.venv/bin/trainchain serve --model "$model" --port "$port" > "$log" 2>&1 &
serve_pid=$!
# Stopped however the script ends; SIGTERM is gunicorn's graceful stop (10 s, then KILL).
stop_service() {
  kill "$serve_pid" 2>/dev/null || return 0
  for _ in $(seq 100); do
    kill -0 "$serve_pid" 2>/dev/null || return 0
    sleep 0.1
  done
  kill -KILL "$serve_pid" 2>/dev/null || true
}
trap stop_service EXIT

# One held-out epoch of the champion, as the JSON array /classify takes (1 x 22 x 750),
# written while the service loads the model.
echo "==> trainchain data heldout $model --out $TRAINCHAIN_HOME/epoch.json"
.venv/bin/trainchain data heldout "$model" --out "$TRAINCHAIN_HOME/epoch.json"

# curl when the machine has it (the commands shown are the ones a user would type);
# else Python's urllib from .venv, so the demo needs nothing installed by hand.
if command -v curl >/dev/null; then
  health_down() { ! curl -fsS -o /dev/null --max-time 5 "$url/health" 2>/dev/null; }
  classify() {
    echo "==> curl -X POST $url/classify -H 'content-type: application/json' --data-binary @$1"
    curl -fsS --max-time 30 -X POST "$url/classify" -H 'content-type: application/json' \
      --data-binary "@$1"
  }
else
  echo "==> curl is not installed: talking to the service with Python's urllib instead"
  health_down() {
    ! .venv/bin/python -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=5)' \
      "$url/health" 2>/dev/null
  }
  classify() {
    echo "==> POST $url/classify (content-type: application/json) with the body $1"
    .venv/bin/python - "$url/classify" "$1" <<'PY'
import sys, urllib.request
with open(sys.argv[2], "rb") as body:
    request = urllib.request.Request(
        sys.argv[1], data=body.read(), headers={"content-type": "application/json"}
    )
with urllib.request.urlopen(request, timeout=30) as answer:
    sys.stdout.write(answer.read().decode())
PY
  }
fi
for _ in $(seq 120); do  # 60 s at most for the workers to load the model
  health_down || break
  kill -0 "$serve_pid" 2>/dev/null || { tail -n 20 "$log" >&2; echo "error: trainchain serve exited" >&2; exit 1; }
  sleep 0.5
done
if health_down; then
  tail -n 20 "$log" >&2
  echo "error: $url/health is not 200 after 60 s" >&2
  exit 1
fi
classify "$TRAINCHAIN_HOME/epoch.json"
echo
