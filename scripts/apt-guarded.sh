# Sourced by the scripts that install Debian packages (start-docker.sh, install-sshd.sh):
#   apt_install_guarded PACKAGES...
# installs PACKAGES without letting their package scripts start services: invoke-rc.d
# asks policy-rc.d, and a policy-rc.d that exits 101 says no. Whatever policy-rc.d was
# there before is put back afterwards. Needs root.
POLICY=/usr/sbin/policy-rc.d

apt_install_guarded() {
  backup=""
  if [ -e "$POLICY" ]; then
    backup=$(mktemp)
    cp -p "$POLICY" "$backup"
  fi
  restore_policy() {
    if [ -n "$backup" ]; then
      cp -p "$backup" "$POLICY" && rm -f "$backup"
    else
      rm -f "$POLICY"
    fi
  }
  trap restore_policy EXIT
  printf '#!/bin/sh\nexit 101\n' > "$POLICY"
  chmod 755 "$POLICY"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "$@" >/dev/null
  restore_policy
  trap - EXIT
}
