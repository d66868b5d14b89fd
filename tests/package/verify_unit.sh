#!/usr/bin/env bash
# systemd-analyze verify on the unit, with ExecStart pointing at the built daemon.
set -uo pipefail
TEMPLATE="$1"
BINDIR="$2"
if ! command -v systemd-analyze >/dev/null 2>&1; then
  echo "SKIPPED: systemd-analyze is not installed (Debian package systemd)"
  exit 77
fi
DIR="$(mktemp -d)"
trap 'rm -rf "$DIR"' EXIT
sed "s#@CMAKE_INSTALL_FULL_BINDIR@#$BINDIR#; s#@SPARSEKV_FULL_SYSCONFDIR@#/etc#" "$TEMPLATE" > "$DIR/sparsekvd.service"
out="$(systemd-analyze verify "$DIR/sparsekvd.service" 2>&1)"
rc=$?
echo "$out"
if [ $rc -ne 0 ] || echo "$out" | grep -q "sparsekvd.service"; then
  echo "systemd-analyze verify found problems in sparsekvd.service"
  exit 1
fi
echo "systemd-analyze verify: sparsekvd.service OK"
