#!/usr/bin/env bash
# README command 1: install, build, then run postern in front of real Dovecot and Postfix.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install-deps.sh
cmake --preset default >/dev/null
cmake --build --preset default -j"$(nproc)" --target postern
exec python3 tools/quickstart.py "$@"
