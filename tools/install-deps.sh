#!/usr/bin/env bash
# Installs every Debian package postern's build, tests and quickstart need, without starting daemons.
set -euo pipefail

packages=(
  build-essential cmake pkg-config clang libclang-rt-14-dev
  libuv1-dev libssl-dev libtomlplusplus-dev prometheus-cpp-dev libgtest-dev
  dovecot-core dovecot-imapd dovecot-pop3d postfix
  curl openssl python3 swaks procps prometheus testssl.sh yamllint haproxy systemd
  offlineimap3 isync dovecot-managesieved dovecot-sieve sieve-connect lintian dpkg-dev man-db
  nlohmann-json3-dev chromium
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

export DEBIAN_FRONTEND=noninteractive
# Debian's maintainer scripts would start dovecot, postfix and haproxy; the tests run their own.
policy=/usr/sbin/policy-rc.d
had_policy=0
[ -e "$policy" ] && had_policy=1
if [ $had_policy -eq 0 ]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy"
  chmod 755 "$policy"
  trap 'rm -f "$policy"' EXIT
fi
echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"
