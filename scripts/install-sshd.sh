#!/usr/bin/env bash
# Make Debian's OpenSSH server available, idempotently, for the Jenkins SSH agent of the
# jenkins test tier (tests/jenkins_real.py starts its own sshd on loopback, with its own
# configuration and keys, and stops it afterwards):
#   - sshd already installed: say so and stop;
#   - else install openssh-server without letting its package scripts start the system's
#     sshd on port 22 (the policy-rc.d guard of scripts/apt-guarded.sh).
# Needs root only when it has to install.
# Usage: scripts/install-sshd.sh
set -euo pipefail

SSHD=/usr/sbin/sshd

. "$(dirname "$0")/apt-guarded.sh"

if [ -x "$SSHD" ]; then
  echo "sshd is installed ($(dpkg-query -W -f '${Package} ${Version}' openssh-server 2>/dev/null || echo "$SSHD")); nothing to install"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "error: $SSHD is missing, and installing openssh-server needs root (this is uid $(id -u))." >&2
  echo "       run: sudo $0" >&2
  exit 1
fi
echo "==> installing Debian's openssh-server (no sshd is started)"
started=$SECONDS
apt_install_guarded openssh-server
echo "    installed $(dpkg-query -W -f '${Package} ${Version}' openssh-server) in $((SECONDS - started)) s"
