#!/usr/bin/env bash
# Schemathesis against a real `wasmspawner serve`: every check, on every
# operation of /v1/openapi.json; the host's document must be exactly as
# strict as the host. Usage: run.sh WASMSPAWNER_BINARY SCHEMATHESIS_BINARY
# (from the repository root, after `cargo xtask plugins`). The instance may
# run nothing (no grants): generated spawns fail at submit, nothing starts.
set -euo pipefail
BIN=$(realpath "$1")
ST=$(realpath "$2")
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
WORK=$(mktemp -d /tmp/wasmspawner-schemathesis.XXXXXX)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
TOKEN=$(python3 -c 'import secrets; print(secrets.token_hex(24))')
umask 077
printf '%s\n' "$TOKEN" > "$WORK/token"
cat > "$WORK/host.toml" <<TOML
state_dir = "$WORK/state"
[http]
listen = "127.0.0.1:$PORT"
token_file = "$WORK/token"
[instances.local]
plugin = "$ROOT/target/plugins/local.wasm"
[instances.local.config]
interfaces = ["lab", "notebook"]
TOML
"$BIN" serve --config "$WORK/host.toml" > "$WORK/host.log" 2>&1 &
HOST_PID=$!
stop_host() {
  kill "$HOST_PID" 2>/dev/null || true
  wait "$HOST_PID" 2>/dev/null || true
}
trap stop_host EXIT
for _ in $(seq 1 100); do
  if python3 -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$PORT/healthz', timeout=1)" 2>/dev/null; then
    break
  fi
  kill -0 "$HOST_PID" 2>/dev/null || { cat "$WORK/host.log"; exit 1; }
  sleep 0.1
done
cd "$ROOT/tests/schemathesis"
status=0
"$ST" run "http://127.0.0.1:$PORT/v1/openapi.json" \
  --header "Authorization: Bearer $TOKEN" \
  --workers 2 \
  --max-examples "${SCHEMATHESIS_MAX_EXAMPLES:-50}" \
  --seed "${SCHEMATHESIS_SEED:-1}" \
  --no-color || status=$?
if [ "$status" != 0 ]; then
  echo "== host log (last 40 lines)"
  tail -40 "$WORK/host.log"
fi
stop_host
trap - EXIT
rm -rf "$WORK"
exit "$status"
