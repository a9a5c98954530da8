#!/usr/bin/env bash
# README command 2: install, build and run the whole test suite: unit and integration tests
# (real Dovecot, Postfix and clients), then all of them again under AddressSanitizer + UBSan,
# then a bounded libFuzzer run of the protocol filters.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install-deps.sh
jobs=$(nproc)
for preset in default asan fuzz; do
  echo "== preset $preset"
  cmake --preset "$preset" >/dev/null
  cmake --build --preset "$preset" -j"$jobs"
  ctest --preset "$preset" -j"$jobs"
done
