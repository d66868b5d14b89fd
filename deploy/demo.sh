#!/usr/bin/env bash
# The main job, end to end on this machine: start sparsekvd on loopback with an embedded
# memfd pool sized to fit the machine, run the demo client (prefill, decode appends, batched
# top-k fetch of all 61 layers, byte-for-byte verification), show the daemon's status, and stop
# the daemon cleanly.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR="${BUILD_DIR:-build}"
[ -x "$BUILD_DIR/server/sparsekvd" ] || deploy/setup.sh

RUN_DIR="$(mktemp -d /tmp/sparsekv-demo.XXXXXX)"
cleanup() {
  if [ -n "${DAEMON_PID:-}" ] && kill -0 "$DAEMON_PID" 2>/dev/null; then kill -TERM "$DAEMON_PID"; wait "$DAEMON_PID" || true; fi
  rm -rf "$RUN_DIR"
}
trap cleanup EXIT

echo "== starting sparsekvd (memfd pool sized to this machine, loopback only)"
"$BUILD_DIR/server/sparsekvd" --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 --runtime-dir "$RUN_DIR" \
  --ready-file "$RUN_DIR/ready.json" 2> >(sed 's/^/[sparsekvd] /' >&2) &
DAEMON_PID=$!
for _ in $(seq 1 600); do
  [ -f "$RUN_DIR/ready.json" ] && break
  kill -0 "$DAEMON_PID" 2>/dev/null || { echo "sparsekvd exited during start-up" >&2; exit 1; }
  sleep 0.05
done
[ -f "$RUN_DIR/ready.json" ] || { echo "sparsekvd did not become ready" >&2; exit 1; }
PORT="$(sed -E 's/.*"port":([0-9]+).*/\1/' "$RUN_DIR/ready.json")"
SERVER="127.0.0.1:$PORT"

echo "== demo client"
"$BUILD_DIR/client/sparsekv-demo" --server "$SERVER" --keep
echo "== Python demo (import sparsekv)"
SPARSEKV_LIBRARY="$BUILD_DIR/client/libsparsekv.so" PYTHONPATH="$PWD/python" /usr/bin/python3 python/examples/demo.py --server "$SERVER"
echo "== sparsekvctl status / regions"
"$BUILD_DIR/server/sparsekvctl" --server "$SERVER" status
"$BUILD_DIR/server/sparsekvctl" --server "$SERVER" regions
echo "== stopping sparsekvd"
kill -TERM "$DAEMON_PID"
wait "$DAEMON_PID"
DAEMON_PID=""
echo "== done"
