#!/usr/bin/env bash
# Builds the Debian package: postern_<version>-1_<arch>.deb in build/package/ (or in $OUT_DIR).
#   bash tools/build-deb.sh            # builds a release binary first
#   POSTERN_BIN=path bash tools/build-deb.sh   # packages that binary instead (the test does)
# Contents: /usr/sbin/postern, the hardened systemd unit, the sysusers file, the man pages
# postern(8) and postern.toml(5), /etc/postern/postern.toml (a conffile: the example config,
# plaintext listeners only, so that it checks before any certificate is in place), copyright
# and changelog. dpkg-shlibdeps works out the library dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
version=$(sed -n 's/^project(postern VERSION \([0-9.]*\).*/\1/p' CMakeLists.txt)
revision=1
arch=$(dpkg --print-architecture)
out=${OUT_DIR:-$root/build/package}
mkdir -p "$out"

binary=${POSTERN_BIN:-}
if [ -z "$binary" ]; then
  cmake -S . -B "$out/build" -DCMAKE_BUILD_TYPE=Release -DPOSTERN_TESTS=OFF >/dev/null
  cmake --build "$out/build" -j"$(nproc)" --target postern
  binary=$out/build/postern
fi

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
pkg=$stage/postern
install -d "$pkg/DEBIAN" "$pkg/usr/sbin" "$pkg/lib/systemd/system" "$pkg/usr/lib/sysusers.d" \
  "$pkg/etc/postern/tls" "$pkg/usr/share/man/man8" "$pkg/usr/share/man/man5" \
  "$pkg/usr/share/doc/postern"
install -m 0755 "$binary" "$pkg/usr/sbin/postern"
strip --strip-unneeded --remove-section=.comment --remove-section=.note "$pkg/usr/sbin/postern"
# The unit and sysusers file as deploy/systemd has them, the binary where the package puts it.
sed 's#/usr/local/bin/postern#/usr/sbin/postern#g' deploy/systemd/postern.service \
  >"$pkg/lib/systemd/system/postern.service"
chmod 0644 "$pkg/lib/systemd/system/postern.service"
install -m 0644 deploy/systemd/postern.sysusers.conf "$pkg/usr/lib/sysusers.d/postern.conf"
"$binary" --print-example-config >"$pkg/etc/postern/postern.toml"
chmod 0644 "$pkg/etc/postern/postern.toml"
gzip -9n -c deploy/man/postern.8 >"$pkg/usr/share/man/man8/postern.8.gz"
gzip -9n -c deploy/man/postern.toml.5 >"$pkg/usr/share/man/man5/postern.toml.5.gz"
chmod 0644 "$pkg"/usr/share/man/man*/*.gz

cat >"$pkg/usr/share/doc/postern/copyright" <<'EOF'
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: postern
Source: https://example.org/postern

Files: *
Copyright: 2026 The postern developers
License: MIT
 Permission is hereby granted, free of charge, to any person obtaining a copy of this
 software and associated documentation files (the "Software"), to deal in the Software
 without restriction, including without limitation the rights to use, copy, modify, merge,
 publish, distribute, sublicense, and/or sell copies of the Software, and to permit persons
 to whom the Software is furnished to do so, subject to the following conditions:
 .
 The above copyright notice and this permission notice shall be included in all copies or
 substantial portions of the Software.
 .
 THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED,
 INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR
 PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE
 FOR ANY CLAIM, DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR
 OTHERWISE, ARISING FROM, OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER
 DEALINGS IN THE SOFTWARE.
EOF
cat >"$stage/changelog" <<EOF
postern ($version-$revision) unstable; urgency=medium

  * Package built from the postern source tree (tools/build-deb.sh).

 -- postern developers <postern@example.org>  $(date -R -d @"${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}")
EOF
gzip -9n -c "$stage/changelog" >"$pkg/usr/share/doc/postern/changelog.Debian.gz"
chmod 0644 "$pkg/usr/share/doc/postern/"*

# Library dependencies, as dpkg-shlibdeps finds them (it wants a debian/control beside it).
mkdir -p "$stage/src/debian"
printf 'Source: postern\n\nPackage: postern\nArchitecture: any\n' >"$stage/src/debian/control"
depends=$(cd "$stage/src" && dpkg-shlibdeps -O "$pkg/usr/sbin/postern" 2>/dev/null |
  sed -n 's/^shlibs:Depends=//p')
size=$(du -sk --exclude=DEBIAN "$pkg" | cut -f1)

cat >"$pkg/DEBIAN/control" <<EOF
Package: postern
Version: $version-$revision
Architecture: $arch
Maintainer: postern developers <postern@example.org>
Installed-Size: $size
Depends: $depends, systemd | systemd-sysusers
Section: mail
Priority: optional
Homepage: https://example.org/postern
Description: protocol-aware mail proxy and TLS terminator
 postern accepts POP3, IMAP, SMTP and ManageSieve clients on plaintext and
 implicit-TLS ports, terminates TLS or upgrades sessions with STARTTLS,
 rewrites capability lists, refuses plaintext authentication where TLS is
 required, and relays each session to a server of a backend pool with
 balancing, health checks, failover and routes by server name or user
 domain. It tells the servers the real client address (PROXY protocol,
 XCLIENT) and exports metrics for Prometheus.
EOF
printf '/etc/postern/postern.toml\n' >"$pkg/DEBIAN/conffiles"

# The system user before the service can run; nothing is started: the operator configures
# first, then `systemctl enable --now postern`. DPKG_ROOT: an install into another root.
cat >"$pkg/DEBIAN/postinst" <<'EOF'
#!/bin/sh
set -e
if [ "$1" = "configure" ]; then
    systemd-sysusers --root="${DPKG_ROOT:-/}" postern.conf || true
    if [ -z "${DPKG_ROOT:-}" ] && getent group postern >/dev/null; then
        chgrp postern /etc/postern /etc/postern/tls /etc/postern/postern.toml
        chmod 0750 /etc/postern /etc/postern/tls
        chmod 0640 /etc/postern/postern.toml
    fi
    if [ -z "${DPKG_ROOT:-}" ] && [ -d /run/systemd/system ]; then
        systemctl --system daemon-reload >/dev/null || true
    fi
fi
exit 0
EOF
cat >"$pkg/DEBIAN/postrm" <<'EOF'
#!/bin/sh
set -e
if [ "$1" = "remove" ] && [ -z "${DPKG_ROOT:-}" ] && [ -d /run/systemd/system ]; then
    systemctl --system daemon-reload >/dev/null || true
fi
exit 0
EOF
chmod 0755 "$pkg/DEBIAN/postinst" "$pkg/DEBIAN/postrm"
(cd "$pkg" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z |
  xargs -0 md5sum >DEBIAN/md5sums)
chmod 0644 "$pkg/DEBIAN/md5sums"

deb="$out/postern_${version}-${revision}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$pkg" "$deb" >/dev/null
echo "$deb"
