#!/usr/bin/env bash
# Run the real Prometheus and Alertmanager (Debian's packages) on loopback with the
# project's monitoring/ files, in a run folder of their own, idempotently:
#   - prometheus or prometheus-alertmanager not installed: install Debian's packages
#     without letting their package scripts start services (the policy-rc.d guard of
#     scripts/apt-guarded.sh), then disable the system services they register, so that
#     nothing starts them at boot either; without root, only say what to run;
#   - render monitoring/prometheus.yml, rules/ and alertmanager.yml into the run folder
#     with this run's ports, targets and webhook (the committed files keep production
#     values; --interval, --for and --group-wait shorten them, for tests), check them
#     with promtool and amtool, and start both, detached, on 127.0.0.1;
#   - wait until both answer /-/ready (TRAINCHAIN_MONITORING_WAIT s, default 60; the
#     log's tail is printed if one never does) and print, for eval, their URLs:
#
#   eval "$(scripts/start-monitoring.sh [options])"
#   ...
#   scripts/start-monitoring.sh --stop "$TRAINCHAIN_MONITORING_DIR"
#
# Options (each also an environment variable):
#   --install-only          install the packages if missing, start nothing (CI's .ci/run)
#   --dir DIR               run folder: rendered files, data, logs, pids (default: a new
#                           temporary folder)
#   --prometheus-port P     TRAINCHAIN_PROMETHEUS_PORT, default 9090; 0: any free port
#   --alertmanager-port P   TRAINCHAIN_ALERTMANAGER_PORT, default 9093; 0: any free port
#   --serve-target H:P      a `trainchain serve` to scrape (repeatable; default the one in
#                           prometheus.yml, 127.0.0.1:5005)
#   --webhook-url URL       TRAINCHAIN_ALERT_WEBHOOK_URL, where the drift alert is POSTed
#                           (default the one in alertmanager.yml, `trainchain hooks serve`)
#   --token-file FILE       TRAINCHAIN_ALERT_TOKEN_FILE, the webhook's bearer token (default:
#                           a new random one, written into the run folder)
#   --interval DUR          TRAINCHAIN_MONITORING_INTERVAL, scrape and rule evaluation
#                           interval (default prometheus.yml's 15s)
#   --for DUR               TRAINCHAIN_MONITORING_FOR, every alert rule's `for:` (default
#                           each rule's own)
#   --group-wait DUR        TRAINCHAIN_MONITORING_GROUP_WAIT, Alertmanager's group_wait
#                           (default alertmanager.yml's 30s)
#   --stop DIR              stop the Prometheus and Alertmanager started in DIR
# Prints, for eval: PROMETHEUS_URL, ALERTMANAGER_URL, PROMETHEUS_PID, ALERTMANAGER_PID,
# TRAINCHAIN_MONITORING_DIR, TRAINCHAIN_ALERT_TOKEN_FILE. Progress goes to stderr.
# Needs root only when it has to install.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
MONITORING=$(cd "$here/../monitoring" && pwd)

PROMETHEUS=prometheus
ALERTMANAGER=prometheus-alertmanager   # Debian's name of the alertmanager binary
WAIT=${TRAINCHAIN_MONITORING_WAIT:-60}

say() { echo "$@" >&2; }
die() { echo "start-monitoring.sh: error: $*" >&2; exit 1; }

# --------------------------------------------------------------------------- stop
# A pid file's process, only while it still is ours: its command line names the run
# folder (a pid reused by another process is left alone).
our_pid() {
  local dir=$1 name=$2 pid
  pid=$(cat "$dir/$name.pid" 2>/dev/null) || return 1
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$dir/" || return 1
  echo "$pid"
}

stop_one() {
  local dir=$1 name=$2 pid
  pid=$(our_pid "$dir" "$name") || { say "$name: not running in $dir"; return 0; }
  kill "$pid" 2>/dev/null || return 0
  for _ in $(seq 60); do
    kill -0 "$pid" 2>/dev/null || { say "$name (pid $pid) stopped"; return 0; }
    sleep 0.25
  done
  say "$name (pid $pid) did not stop within 15 s of SIGTERM; killing it"
  kill -9 "$pid" 2>/dev/null || true
}

if [ "${1:-}" = "--stop" ]; then
  [ $# -eq 2 ] || die "usage: $0 --stop DIR (the TRAINCHAIN_MONITORING_DIR it printed)"
  dir=$(cd "$2" && pwd) || die "no run folder $2"
  stop_one "$dir" prometheus
  stop_one "$dir" alertmanager
  exit 0
fi

# --------------------------------------------------------------------------- options
install_only=0; dir=""; targets=()
prom_port=${TRAINCHAIN_PROMETHEUS_PORT:-9090}
am_port=${TRAINCHAIN_ALERTMANAGER_PORT:-9093}
webhook=${TRAINCHAIN_ALERT_WEBHOOK_URL:-}
token_file=${TRAINCHAIN_ALERT_TOKEN_FILE:-}
interval=${TRAINCHAIN_MONITORING_INTERVAL:-}
for_=${TRAINCHAIN_MONITORING_FOR:-}
group_wait=${TRAINCHAIN_MONITORING_GROUP_WAIT:-}
while [ $# -gt 0 ]; do
  case "$1" in
    --install-only) install_only=1; shift ;;
    --dir) dir=$2; shift 2 ;;
    --prometheus-port) prom_port=$2; shift 2 ;;
    --alertmanager-port) am_port=$2; shift 2 ;;
    --serve-target) targets+=("$2"); shift 2 ;;
    --webhook-url) webhook=$2; shift 2 ;;
    --token-file) token_file=$2; shift 2 ;;
    --interval) interval=$2; shift 2 ;;
    --for) for_=$2; shift 2 ;;
    --group-wait) group_wait=$2; shift 2 ;;
    *) die "unknown argument $1 (the comment at the top of $0 lists the options)" ;;
  esac
done
duration='^[0-9]+(ms|s|m|h)$'
for pair in "interval:$interval" "for:$for_" "group-wait:$group_wait"; do
  value=${pair#*:}
  [ -z "$value" ] || [[ $value =~ $duration ]] ||
    die "--${pair%%:*} must be a duration such as 1s, 30s or 10m, got '$value'"
done
for port in "$prom_port" "$am_port"; do
  [[ $port =~ ^[0-9]+$ ]] && [ "$port" -lt 65536 ] || die "a port is a number 0-65535, got '$port'"
done
[ -z "$token_file" ] || [ -r "$token_file" ] || die "--token-file $token_file cannot be read"

# --------------------------------------------------------------------------- install
# apt_install_guarded: Debian packages whose scripts may not start services.
. "$here/apt-guarded.sh"

missing=()
command -v "$PROMETHEUS" >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v "$ALERTMANAGER" >/dev/null 2>&1 && command -v amtool >/dev/null 2>&1 || missing+=(prometheus-alertmanager)
command -v curl >/dev/null 2>&1 || missing+=(curl)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    die "${missing[*]} not installed, and installing needs root (this is uid $(id -u)). Run: sudo $0 --install-only"
  fi
  say "==> installing Debian's ${missing[*]} (no service is started or enabled)"
  started=$SECONDS
  apt_install_guarded "${missing[@]}"
  # The packages' postinst enables their system services (update-rc.d defaults for the
  # init.d script, deb-systemd-helper enable for the unit) and starts them (invoke-rc.d,
  # which the guard refused: nothing runs). These undo the enabling, so nothing starts
  # them at boot either; with systemd running, systemctl stops any that did start.
  for service in prometheus prometheus-alertmanager; do
    update-rc.d "$service" disable >/dev/null 2>&1 || true
    if command -v deb-systemd-helper >/dev/null 2>&1; then
      deb-systemd-helper disable "$service.service" >/dev/null 2>&1 || true
    fi
    if [ -d /run/systemd/system ]; then
      systemctl disable --now "$service" >/dev/null 2>&1 || true
    fi
  done
  say "    installed $(dpkg-query -W -f '${Package} ${Version}  ' prometheus prometheus-alertmanager) in $((SECONDS - started)) s"
fi
if [ "$install_only" = 1 ]; then
  say "prometheus $("$PROMETHEUS" --version 2>&1 | head -n1 | awk '{print $3}') and alertmanager $("$ALERTMANAGER" --version 2>&1 | head -n1 | awk '{print $3}') are installed; nothing started (--install-only)"
  exit 0
fi

# --------------------------------------------------------------------------- render
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
[ "$prom_port" != 0 ] || prom_port=$(free_port)
[ "$am_port" != 0 ] || am_port=$(free_port)
if [ -z "$dir" ]; then
  dir=$(mktemp -d -t trainchain-monitoring.XXXXXX)
fi
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
for name in prometheus alertmanager; do
  if pid=$(our_pid "$dir" "$name"); then
    die "$name already runs in $dir (pid $pid): stop it first with $0 --stop $dir"
  fi
done

# sed, with a check that the committed file still has what is replaced: a renamed key
# must fail here, not start a Prometheus with the production values.
render() {
  local file=$1 pattern=$2 expression=$3
  grep -Eq -- "$pattern" "$file" || die "$file has no line matching '$pattern' to render; has its layout changed?"
  sed -E -i -- "$expression" "$file"
}

mkdir -p "$dir/rules"
cp "$MONITORING/prometheus.yml" "$dir/prometheus.yml"
cp "$MONITORING"/rules/*.rules.yml "$dir/rules/"
cp "$MONITORING/alertmanager.yml" "$dir/alertmanager.yml"

prom_cfg=$dir/prometheus.yml
render "$prom_cfg" '"127\.0\.0\.1:9093"' "s/\"127\\.0\\.0\\.1:9093\"/\"127.0.0.1:$am_port\"/"
render "$prom_cfg" '"127\.0\.0\.1:9090"' "s/\"127\\.0\\.0\\.1:9090\"/\"127.0.0.1:$prom_port\"/"
if [ ${#targets[@]} -gt 0 ]; then
  list=$(printf '"%s", ' "${targets[@]}")
  render "$prom_cfg" '"127\.0\.0\.1:5005"' "s/\"127\\.0\\.0\\.1:5005\"/${list%, }/"
fi
if [ -n "$interval" ]; then
  render "$prom_cfg" '^  scrape_interval:' "s/^(  (scrape|evaluation)_interval:).*/\\1 $interval/"
  # a scrape may not take longer than the interval
  render "$prom_cfg" '^  scrape_timeout:' "s/^(  scrape_timeout:).*/\\1 $interval/"
fi
if [ -n "$for_" ]; then
  for rules in "$dir"/rules/*.rules.yml; do
    render "$rules" '^ +for: ' "s/^( +for:).*/\\1 $for_/"
  done
fi

am_cfg=$dir/alertmanager.yml
if [ -n "$webhook" ]; then
  render "$am_cfg" '^ +- url: http://127\.0\.0\.1:8088/alerts$' "s#^( +- url:) http://127\\.0\\.0\\.1:8088/alerts\$#\\1 $webhook#"
fi
if [ -n "$group_wait" ]; then
  render "$am_cfg" '^ +group_wait:' "s/^( +group_wait:).*/\\1 $group_wait/"
fi
if [ -n "$token_file" ]; then
  install -m 600 "$token_file" "$dir/alert-webhook-token"
elif [ ! -s "$dir/alert-webhook-token" ]; then
  (umask 077 && python3 -c 'import secrets; print(secrets.token_urlsafe(32), end="")' >"$dir/alert-webhook-token")
fi

promtool check config "$prom_cfg" >"$dir/promtool.log" 2>&1 ||
  die "promtool rejects the rendered $prom_cfg: $(cat "$dir/promtool.log")"
amtool check-config "$am_cfg" >"$dir/amtool.log" 2>&1 ||
  die "amtool rejects the rendered $am_cfg: $(cat "$dir/amtool.log")"

# --------------------------------------------------------------------------- start
# setsid + nohup: a session of their own, so they outlive this script and its terminal.
start() {
  local name=$1; shift
  printf '\n=== %s scripts/start-monitoring.sh starts %s\n' "$(date -u +%FT%TZ)" "$name" >>"$dir/$name.log"
  setsid nohup "$@" >>"$dir/$name.log" 2>&1 </dev/null &
  echo $! >"$dir/$name.pid"
}
start prometheus "$PROMETHEUS" \
  --config.file="$prom_cfg" \
  --storage.tsdb.path="$dir/prometheus-data" \
  --web.listen-address="127.0.0.1:$prom_port"
# --cluster.listen-address= : one Alertmanager, no gossip port (9094 on every address)
start alertmanager "$ALERTMANAGER" \
  --config.file="$am_cfg" \
  --storage.path="$dir/alertmanager-data" \
  --web.listen-address="127.0.0.1:$am_port" \
  --cluster.listen-address=
say "==> started prometheus (127.0.0.1:$prom_port) and alertmanager (127.0.0.1:$am_port) in $dir"

prom_url=http://127.0.0.1:$prom_port
am_url=http://127.0.0.1:$am_port
deadline=$((SECONDS + WAIT))
for pair in "prometheus $prom_url" "alertmanager $am_url"; do
  name=${pair%% *}; url=${pair#* }
  until curl -sf -o /dev/null "$url/-/ready"; do
    if ! our_pid "$dir" "$name" >/dev/null; then
      say "start-monitoring.sh: error: $name exited before it was ready; the end of $dir/$name.log:"
      tail -n 30 "$dir/$name.log" >&2 || true
      "$0" --stop "$dir" 2>/dev/null || true
      exit 1
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      say "start-monitoring.sh: error: $name was not ready at $url within $WAIT s; the end of $dir/$name.log:"
      tail -n 30 "$dir/$name.log" >&2 || true
      "$0" --stop "$dir" 2>/dev/null || true
      exit 1
    fi
    sleep 0.5
  done
done
say "    both ready after $((SECONDS + WAIT - deadline)) s; stop them with: $0 --stop $dir"

cat <<EOF
export PROMETHEUS_URL=$prom_url
export ALERTMANAGER_URL=$am_url
export PROMETHEUS_PID=$(cat "$dir/prometheus.pid")
export ALERTMANAGER_PID=$(cat "$dir/alertmanager.pid")
export TRAINCHAIN_MONITORING_DIR=$dir
export TRAINCHAIN_ALERT_TOKEN_FILE=$dir/alert-webhook-token
EOF
