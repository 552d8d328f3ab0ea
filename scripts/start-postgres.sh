#!/usr/bin/env bash
# Run a PostgreSQL server of its own (Debian's) on loopback for the Optuna study storage,
# in a run folder, idempotently:
#   - PostgreSQL not installed: install Debian's postgresql without letting its package
#     scripts start a service (the policy-rc.d guard of scripts/apt-guarded.sh), then
#     disable the system service it registers, so that nothing starts it at boot either;
#     without root, only say what to run;
#   - a cluster of its own in the run folder (initdb; as the postgres OS user when run as
#     root, which initdb refuses), listening on 127.0.0.1 only, with a role and database
#     `trainchain` whose random password is written to a 0600 file in the run folder (it is
#     never printed to the log: only on stdout, for eval, in the URL);
#   - start it and wait until it accepts connections on its port (TRAINCHAIN_POSTGRES_WAIT
#     s, default 60; the log's tail is printed if it never does), then print, for eval:
#
#   eval "$(scripts/start-postgres.sh [options])"
#   ...
#   scripts/start-postgres.sh --stop "$TRAINCHAIN_POSTGRES_DIR"
#
# Run again on the same --dir, it reuses the cluster and its password (and starts it if it
# was stopped), and prints the same lines.
#
# With --mlflow it also runs an MLflow tracking server on that PostgreSQL: a database
# `mlflow` owned by the same role (the Optuna tables and MLflow's both keep an
# alembic_version, so they cannot share one), and `mlflow server` on 127.0.0.1 whose
# artifacts it proxies (--serve-artifacts) into DIR/mlartifacts: a client, here or on
# another machine, needs nothing but the URL, and never writes an artifact itself.
# mlflow is the one of the project's venv (this checkout's .venv/bin/mlflow, else the
# first on PATH). The database URL with the password reaches it in the environment
# (MLFLOW_BACKEND_STORE_URI, which mlflow hands on to its workers the same way), not on a
# command line. Its log is DIR/mlflow.log, its process id DIR/mlflow.pid (a process group
# of its own: the server and its workers); it is ready when GET /health answers, within
# TRAINCHAIN_POSTGRES_WAIT s. Run again on the same --dir, a running server is reused.
#
# Options (each also an environment variable):
#   --install-only   install the package if missing, start nothing (CI's .ci/run)
#   --dir DIR        run folder: the cluster (DIR/data), its log, socket and password file
#                    (default: a new temporary folder). Run as root, DIR's parents must let
#                    the postgres user in (/tmp or /var/tmp do)
#   --port P         TRAINCHAIN_POSTGRES_PORT, default 5432; 0: any free port
#   --mlflow         also the MLflow tracking server (above)
#   --mlflow-port P  TRAINCHAIN_MLFLOW_PORT, default 5000; 0: any free port
#                    (TRAINCHAIN_MLFLOW_WORKERS: its worker processes, default 2)
#   --stop DIR       stop the servers started in DIR: MLflow's (SIGTERM, then SIGKILL to its
#                    group after TRAINCHAIN_POSTGRES_WAIT s), then PostgreSQL (pg_ctl stop,
#                    fast mode)
# Prints, for eval: TRAINCHAIN_POSTGRES_DIR, TRAINCHAIN_POSTGRES_URL (with the password) and
# TRAINCHAIN_STUDY_STORAGE (the same URL); with --mlflow also TRAINCHAIN_TRACKING_URI
# (http://127.0.0.1:PORT) and TRAINCHAIN_MLFLOW_PID. Progress goes to stderr. Needs root
# only when it has to install.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

DATABASE=trainchain   # the role and the database
MLFLOW_DATABASE=mlflow  # MLflow's, with --mlflow (owned by the same role)
WAIT=${TRAINCHAIN_POSTGRES_WAIT:-60}

say() { echo "$@" >&2; }
die() { echo "start-postgres.sh: error: $*" >&2; exit 1; }

# The newest installed server's programs (Debian keeps them out of PATH, by major version).
bindir() {
  local found
  found=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  [ -n "$found" ] && [ -x "$found/initdb" ] && [ -x "$found/pg_ctl" ] && echo "$found"
}

# The server refuses to run as root: run its programs as the postgres OS user then, from /
# (a working directory it may not enter would only make them warn).
as_owner() {
  if [ "$(id -u)" -eq 0 ]; then
    (cd / && runuser -u postgres -- "$@")
  else
    "$@"
  fi
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

running() { as_owner "$BIN/pg_ctl" -D "$1/data" status >/dev/null 2>&1; }

# The MLflow server started in run folder $1: its process id, if it still runs (and is
# that server: its command line names the folder, so a reused process id is not taken
# for it).
mlflow_pid() {
  local pid
  pid=$(cat "$1/mlflow.pid" 2>/dev/null) || return 1
  [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null &&
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "--artifacts-destination $1/mlartifacts " &&
    echo "$pid"
}

# Whether the MLflow server on 127.0.0.1:$1 answers GET /health.
healthy() { curl -fsS -o /dev/null -m 5 "http://127.0.0.1:$1/health" 2>/dev/null; }

# Stop the MLflow server of run folder $1: SIGTERM to it (it passes it on to its
# workers), a bounded wait for its whole process group, then SIGKILL to what is left.
stop_mlflow() {
  local pid deadline
  pid=$(mlflow_pid "$1") || { rm -f "$1/mlflow.pid"; return 0; }
  kill -TERM "$pid" 2>/dev/null || true
  deadline=$((SECONDS + WAIT))
  while kill -0 -- "-$pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do
    sleep 0.5
  done
  if kill -0 -- "-$pid" 2>/dev/null; then
    say "mlflow in $1 did not stop within $WAIT s of SIGTERM; killing it"
    kill -KILL -- "-$pid" 2>/dev/null || true
  fi
  rm -f "$1/mlflow.pid"
  say "mlflow in $1 stopped"
}

# --------------------------------------------------------------------------- stop
if [ "${1:-}" = "--stop" ]; then
  [ $# -eq 2 ] || die "usage: $0 --stop DIR (the TRAINCHAIN_POSTGRES_DIR it printed)"
  dir=$(cd "$2" && pwd) || die "no run folder $2"
  stop_mlflow "$dir"
  BIN=$(bindir) || die "PostgreSQL is not installed, so nothing runs in $dir"
  if [ ! -f "$dir/data/PG_VERSION" ] || ! running "$dir"; then
    say "postgresql: not running in $dir"
    exit 0
  fi
  as_owner "$BIN/pg_ctl" -D "$dir/data" stop -m fast -w -t "$WAIT" >/dev/null ||
    die "pg_ctl could not stop the server in $dir within $WAIT s; see $dir/postgres.log"
  say "postgresql in $dir stopped"
  exit 0
fi

# --------------------------------------------------------------------------- options
install_only=0; dir=""; mlflow=0
port=${TRAINCHAIN_POSTGRES_PORT:-5432}
mlflow_port=${TRAINCHAIN_MLFLOW_PORT:-5000}
mlflow_workers=${TRAINCHAIN_MLFLOW_WORKERS:-2}
while [ $# -gt 0 ]; do
  case "$1" in
    --install-only) install_only=1; shift ;;
    --dir) [ $# -ge 2 ] || die "--dir needs a folder"; dir=$2; shift 2 ;;
    --port) [ $# -ge 2 ] || die "--port needs a number"; port=$2; shift 2 ;;
    --mlflow) mlflow=1; shift ;;
    --mlflow-port) [ $# -ge 2 ] || die "--mlflow-port needs a number"; mlflow_port=$2; shift 2 ;;
    *) die "unknown argument $1 (the comment at the top of $0 lists the options)" ;;
  esac
done
[[ $port =~ ^[0-9]+$ ]] && [ "$port" -lt 65536 ] || die "a port is a number 0-65535, got '$port'"
[[ $mlflow_port =~ ^[0-9]+$ ]] && [ "$mlflow_port" -lt 65536 ] ||
  die "TRAINCHAIN_MLFLOW_PORT is a number 0-65535, got '$mlflow_port'"
[[ $mlflow_workers =~ ^[1-9][0-9]*$ ]] ||
  die "TRAINCHAIN_MLFLOW_WORKERS is a whole number above 0, got '$mlflow_workers'"
[[ $WAIT =~ ^[0-9]+$ ]] && [ "$WAIT" -gt 0 ] ||
  die "TRAINCHAIN_POSTGRES_WAIT is whole seconds above 0, got '$WAIT'"

if [ "$mlflow" = 1 ]; then
  # the project's venv: this checkout's, else the first on PATH (checked before anything
  # is started)
  venv_mlflow=$(cd "$here/.." && pwd)/.venv/bin/mlflow
  program=$venv_mlflow
  [ -x "$program" ] || program=$(command -v mlflow) ||
    die "mlflow is not installed: neither $venv_mlflow nor an mlflow on PATH (scripts/setup.sh makes the venv; or put the venv's bin on PATH)"
fi

# --------------------------------------------------------------------------- install
# apt_install_guarded: Debian packages whose scripts may not start services.
. "$here/apt-guarded.sh"

if ! BIN=$(bindir) || ! command -v psql >/dev/null 2>&1; then
  if [ "$(id -u)" -ne 0 ]; then
    die "postgresql not installed, and installing needs root (this is uid $(id -u)). Run: sudo $0 --install-only"
  fi
  say "==> installing Debian's postgresql (no service is started or enabled)"
  started=$SECONDS
  apt_install_guarded postgresql
  # The postinst creates a system cluster and enables the postgresql service (update-rc.d
  # defaults, deb-systemd-helper enable) and starts it (invoke-rc.d, which the guard
  # refused: nothing runs). These undo the enabling, so nothing starts it at boot either.
  update-rc.d postgresql disable >/dev/null 2>&1 || true
  if command -v deb-systemd-helper >/dev/null 2>&1; then
    deb-systemd-helper disable postgresql.service >/dev/null 2>&1 || true
  fi
  if [ -d /run/systemd/system ]; then
    systemctl disable --now postgresql >/dev/null 2>&1 || true
  fi
  BIN=$(bindir) || die "Debian's postgresql is installed but no /usr/lib/postgresql/*/bin/initdb was found"
  say "    installed $(dpkg-query -W -f '${Package} ${Version}' postgresql) in $((SECONDS - started)) s"
fi
if [ "$install_only" = 1 ]; then
  say "postgresql $("$BIN/postgres" --version | awk '{print $3}') is installed; nothing started (--install-only)"
  exit 0
fi

# --------------------------------------------------------------------------- cluster
if [ -z "$dir" ]; then
  dir=$(mktemp -d -t trainchain-postgres.XXXXXX)
fi
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
[[ $dir =~ ^[A-Za-z0-9/._-]+$ ]] ||
  die "the run folder's path may hold only letters, digits and / . _ -, got '$dir'"
if [ "$(id -u)" -eq 0 ]; then
  chown postgres: "$dir"
  runuser -u postgres -- test -x "$dir" -a -w "$dir" ||
    die "the postgres user cannot enter $dir (a parent folder is closed to it); choose a --dir under /tmp or /var/tmp"
fi
password_file=$dir/password
conf=$dir/data/trainchain.conf

if [ ! -f "$dir/data/PG_VERSION" ]; then
  say "==> creating a PostgreSQL cluster in $dir/data"
  # peer: only the cluster's OS user, on its socket in the run folder, is its superuser;
  # over TCP every role needs its password (scram-sha-256).
  as_owner "$BIN/initdb" -D "$dir/data" --auth-local=peer --auth-host=scram-sha-256 \
    --encoding=UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 ||
    die "initdb failed; the end of $dir/initdb.log: $(tail -n 20 "$dir/initdb.log")"
  echo "include_if_exists = 'trainchain.conf'" | as_owner tee -a "$dir/data/postgresql.conf" >/dev/null
  rm -f "$password_file"
fi
if [ ! -s "$password_file" ]; then
  # URL-safe characters only: the password goes into a URL as it is
  (umask 077 && python3 -c 'import secrets; print(secrets.token_urlsafe(24), end="")' >"$password_file")
fi
password=$(cat "$password_file")

if running "$dir"; then
  port=$(sed -n 4p "$dir/data/postmaster.pid")
  say "==> postgresql already runs in $dir on 127.0.0.1:$port"
else
  if [ "$port" = 0 ]; then
    port=$(free_port)
  fi
  # loopback only; the socket in the run folder (Debian's /var/run/postgresql belongs to
  # the system cluster)
  printf "listen_addresses = '127.0.0.1'\nport = %s\nunix_socket_directories = '%s'\n" \
    "$port" "$dir" | as_owner tee "$conf" >/dev/null
  printf '\n=== %s scripts/start-postgres.sh starts postgresql\n' "$(date -u +%FT%TZ)" |
    as_owner tee -a "$dir/postgres.log" >/dev/null
  if ! as_owner "$BIN/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" start -w -t "$WAIT" >/dev/null; then
    say "start-postgres.sh: error: postgresql did not start within $WAIT s; the end of $dir/postgres.log:"
    tail -n 30 "$dir/postgres.log" >&2 || true
    "$0" --stop "$dir" 2>/dev/null || true
    exit 1
  fi
  say "==> started postgresql on 127.0.0.1:$port in $dir"
fi

# bounded: pg_ctl's -w saw the server ready; this waits for its TCP listener as a client
deadline=$((SECONDS + WAIT))
until "$BIN/pg_isready" -q -h 127.0.0.1 -p "$port" -t 5; do
  if [ "$SECONDS" -ge "$deadline" ]; then
    say "start-postgres.sh: error: postgresql did not accept connections on 127.0.0.1:$port within $WAIT s; the end of $dir/postgres.log:"
    tail -n 30 "$dir/postgres.log" >&2 || true
    exit 1
  fi
  sleep 0.5
done

# The role and database, created once; the password is set on every run from the file (it
# goes to psql on stdin, so it is on no command line, and statements are not logged).
as_owner "$BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$dir" -p "$port" -d postgres >/dev/null <<SQL ||
SELECT 'CREATE ROLE $DATABASE LOGIN' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$DATABASE')\gexec
ALTER ROLE $DATABASE WITH LOGIN PASSWORD '$password';
SELECT 'CREATE DATABASE $DATABASE OWNER $DATABASE' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$DATABASE')\gexec
SQL
  die "could not create the role and database $DATABASE; see $dir/postgres.log"
say "    ready: database $DATABASE on 127.0.0.1:$port (its password is in $password_file); stop it with: $0 --stop $dir"

url=postgresql+psycopg2://$DATABASE:$password@127.0.0.1:$port/$DATABASE

# --------------------------------------------------------------------------- mlflow
if [ "$mlflow" = 1 ]; then
  # mlflow.port: its port and the PostgreSQL port it was started on (a server of a cluster
  # that has since moved to another port is started again)
  if pid=$(mlflow_pid "$dir") && read -r mport on_port <"$dir/mlflow.port" &&
    [ "$on_port" = "$port" ] && healthy "$mport"; then
    say "==> mlflow already runs in $dir on 127.0.0.1:$mport (pid $pid)"
  else
    as_owner "$BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$dir" -p "$port" -d postgres >/dev/null <<SQL ||
SELECT 'CREATE DATABASE $MLFLOW_DATABASE OWNER $DATABASE' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$MLFLOW_DATABASE')\gexec
SQL
      die "could not create the database $MLFLOW_DATABASE; see $dir/postgres.log"
    stop_mlflow "$dir" 2>/dev/null  # one that no longer answers or is on an old port
    mport=$mlflow_port
    [ "$mport" = 0 ] && mport=$(free_port)
    if healthy "$mport" || ! python3 -c 'import socket, sys; socket.create_server(("127.0.0.1", int(sys.argv[1])))' "$mport" 2>/dev/null; then
      die "127.0.0.1:$mport is taken by another program; choose another with --mlflow-port (or TRAINCHAIN_MLFLOW_PORT; 0 is any free port)"
    fi
    mkdir -p "$dir/mlartifacts"
    echo "$mport $port" >"$dir/mlflow.port"
    printf '\n=== %s scripts/start-postgres.sh starts mlflow server on 127.0.0.1:%s\n' \
      "$(date -u +%FT%TZ)" "$mport" >>"$dir/mlflow.log"
    # setsid: a process group of its own (the server and its workers), which --stop can
    # kill whole; the backend URL, with the password, only in its environment. No job
    # execution (MLflow's GenAI scorer jobs, half a dozen huey consumers trainchain never
    # uses).
    MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false \
      MLFLOW_BACKEND_STORE_URI=postgresql+psycopg2://$DATABASE:$password@127.0.0.1:$port/$MLFLOW_DATABASE \
      setsid "$program" server --host 127.0.0.1 --port "$mport" --workers "$mlflow_workers" \
      --serve-artifacts --artifacts-destination "$dir/mlartifacts" \
      --default-artifact-root mlflow-artifacts:/ </dev/null >>"$dir/mlflow.log" 2>&1 &
    pid=$!
    echo "$pid" >"$dir/mlflow.pid"
    deadline=$((SECONDS + WAIT))
    until healthy "$mport"; do
      if ! kill -0 "$pid" 2>/dev/null || [ "$SECONDS" -ge "$deadline" ]; then
        say "start-postgres.sh: error: mlflow server did not answer http://127.0.0.1:$mport/health within $WAIT s (TRAINCHAIN_POSTGRES_WAIT); the end of $dir/mlflow.log:"
        tail -n 30 "$dir/mlflow.log" >&2 || true
        stop_mlflow "$dir" 2>/dev/null || true
        exit 1
      fi
      sleep 0.5
    done
    say "==> started mlflow server on http://127.0.0.1:$mport (database $MLFLOW_DATABASE, artifacts in $dir/mlartifacts, log $dir/mlflow.log)"
  fi
fi

cat <<EOF
export TRAINCHAIN_POSTGRES_DIR=$dir
export TRAINCHAIN_POSTGRES_URL=$url
export TRAINCHAIN_STUDY_STORAGE=$url
EOF
if [ "$mlflow" = 1 ]; then
  cat <<EOF
export TRAINCHAIN_TRACKING_URI=http://127.0.0.1:$mport
export TRAINCHAIN_MLFLOW_PID=$pid
EOF
fi
