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
# Options (each also an environment variable):
#   --install-only   install the package if missing, start nothing (CI's .ci/run)
#   --dir DIR        run folder: the cluster (DIR/data), its log, socket and password file
#                    (default: a new temporary folder). Run as root, DIR's parents must let
#                    the postgres user in (/tmp or /var/tmp do)
#   --port P         TRAINCHAIN_POSTGRES_PORT, default 5432; 0: any free port
#   --stop DIR       stop the server started in DIR (pg_ctl stop, fast mode)
# Prints, for eval: TRAINCHAIN_POSTGRES_DIR, TRAINCHAIN_POSTGRES_URL (with the password) and
# TRAINCHAIN_STUDY_STORAGE (the same URL). Progress goes to stderr. Needs root only when it
# has to install.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

DATABASE=trainchain   # the role and the database
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

running() { as_owner "$BIN/pg_ctl" -D "$1/data" status >/dev/null 2>&1; }

# --------------------------------------------------------------------------- stop
if [ "${1:-}" = "--stop" ]; then
  [ $# -eq 2 ] || die "usage: $0 --stop DIR (the TRAINCHAIN_POSTGRES_DIR it printed)"
  dir=$(cd "$2" && pwd) || die "no run folder $2"
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
install_only=0; dir=""
port=${TRAINCHAIN_POSTGRES_PORT:-5432}
while [ $# -gt 0 ]; do
  case "$1" in
    --install-only) install_only=1; shift ;;
    --dir) [ $# -ge 2 ] || die "--dir needs a folder"; dir=$2; shift 2 ;;
    --port) [ $# -ge 2 ] || die "--port needs a number"; port=$2; shift 2 ;;
    *) die "unknown argument $1 (the comment at the top of $0 lists the options)" ;;
  esac
done
[[ $port =~ ^[0-9]+$ ]] && [ "$port" -lt 65536 ] || die "a port is a number 0-65535, got '$port'"
[[ $WAIT =~ ^[0-9]+$ ]] && [ "$WAIT" -gt 0 ] ||
  die "TRAINCHAIN_POSTGRES_WAIT is whole seconds above 0, got '$WAIT'"

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
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
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
cat <<EOF
export TRAINCHAIN_POSTGRES_DIR=$dir
export TRAINCHAIN_POSTGRES_URL=$url
export TRAINCHAIN_STUDY_STORAGE=$url
EOF
