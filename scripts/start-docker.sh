#!/usr/bin/env bash
# Make a Docker engine answer on this machine (CI, a fresh Debian box), idempotently:
#   - no docker-compose installed: install Debian's docker-compose (1.29, which reads
#     docker-compose.yml), guarded like docker.io below; without root, only say so;
#   - an engine already answers: print its version and stop (never a second daemon);
#   - no dockerd installed: install Debian's docker.io without letting its package
#     scripts start services (a policy-rc.d that exits 101, put back afterwards);
#   - start `dockerd --iptables=false --bridge=none` (the flags that work on machines
#     without iptables or a bridge), detached so it outlives this script, and wait until
#     `docker info` answers (60 s at most; the log's tail is printed if it never does).
# Needs root only when it has to install or start something.
# Usage: scripts/start-docker.sh
# Environment: TRAINCHAIN_DOCKERD_LOG (default /var/log/trainchain-dockerd.log),
#              TRAINCHAIN_DOCKERD_WAIT (seconds, default 60).
set -euo pipefail

LOG=${TRAINCHAIN_DOCKERD_LOG:-/var/log/trainchain-dockerd.log}
WAIT=${TRAINCHAIN_DOCKERD_WAIT:-60}

# The engine's version, or nothing (and a non-zero status) when no engine answers.
engine_version() {
  command -v docker >/dev/null 2>&1 || return 1
  local v
  v=$(timeout 10 docker info --format '{{.ServerVersion}}' 2>/dev/null) || return 1
  [ -n "$v" ] || return 1
  echo "$v"
}

# apt_install_guarded: Debian packages whose scripts may not start services.
. "$(dirname "$0")/apt-guarded.sh"

if ! command -v docker-compose >/dev/null 2>&1; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "note: docker-compose is not installed, and installing it needs root (this is uid $(id -u));" >&2
    echo "      docker-compose.yml cannot be checked or started here. Run: sudo $0" >&2
  else
    echo "==> installing Debian's docker-compose (docker-compose is not installed)"
    started=$SECONDS
    apt_install_guarded docker-compose
    echo "    installed $(dpkg-query -W -f '${Package} ${Version}' docker-compose) in $((SECONDS - started)) s"
  fi
fi

if v=$(engine_version); then
  echo "docker engine $v answers; nothing to start"
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "error: no Docker engine answers, and starting one needs root (this is uid $(id -u))." >&2
  echo "       run: sudo $0   (or start your engine, or set DOCKER_HOST)" >&2
  exit 1
fi

# A dockerd that is running but not answering yet (still starting): wait for it rather
# than start a second one, which would fight it over /var/lib/docker.
running=$(pgrep -x dockerd || true)

if [ -z "$running" ] && ! command -v dockerd >/dev/null 2>&1; then
  echo "==> installing Debian's docker.io (dockerd is not installed)"
  started=$SECONDS
  # Package scripts would try to start the daemon through invoke-rc.d; the guard tells
  # them not to.
  apt_install_guarded docker.io ca-certificates
  echo "    installed $(dpkg-query -W -f '${Package} ${Version}' docker.io) in $((SECONDS - started)) s"
fi

start_dockerd() {
  mkdir -p "$(dirname "$LOG")"
  echo "==> starting dockerd --iptables=false --bridge=none (log: $LOG)"
  printf '\n=== %s scripts/start-docker.sh starts dockerd\n' "$(date -u +%FT%TZ)" >> "$LOG"
  # setsid + nohup: its own session, so it survives this script and its terminal.
  setsid nohup dockerd --iptables=false --bridge=none >> "$LOG" 2>&1 < /dev/null &
  launched=$!
  sleep 0.5
  pid=$(pgrep -x -n dockerd || true)
  [ -n "$pid" ] || pid=$launched
  ours=1
}

ours=0
if [ -n "$running" ]; then
  echo "==> dockerd is already running (pid $running) but does not answer yet; waiting for it"
  pid=${running%%$'\n'*}
else
  start_dockerd
fi
dockerd_alive() { kill -0 "$pid" 2>/dev/null || [ -n "$(pgrep -x dockerd || true)" ]; }

deadline=$((SECONDS + WAIT))
while [ "$SECONDS" -lt "$deadline" ]; do
  if v=$(engine_version); then
    echo "docker engine $v answers (dockerd pid $pid, after $((SECONDS + WAIT - deadline)) s)"
    exit 0
  fi
  if ! dockerd_alive; then
    if [ "$ours" = 0 ]; then
      # the dockerd we found was on its way out (killed with its session): start ours, once
      echo "==> dockerd (pid $pid) went away without answering; starting a new one"
      start_dockerd
      continue
    fi
    echo "error: dockerd (pid $pid) exited before answering; the end of $LOG:" >&2
    tail -n 30 "$LOG" >&2 || true
    exit 1
  fi
  sleep 1
done
echo "error: dockerd (pid $pid) did not answer within $WAIT s; it is left running. The end of $LOG:" >&2
tail -n 30 "$LOG" >&2 || true
exit 1
