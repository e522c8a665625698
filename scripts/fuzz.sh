#!/usr/bin/env bash
# Fuzzes a real node through its own OpenAPI document with Schemathesis: every check (no 5xx,
# responses match the schema, schema-valid requests accepted, invalid ones rejected, 405s with
# Allow, stateful sequences). Targets 127.0.0.1 only and stops by itself.
# usage: scripts/fuzz.sh [MAX_EXAMPLES]
#        SPLIT=1 scripts/fuzz.sh   # the same against a front and a backend joined by Redis
#        CLUSTER=1 scripts/fuzz.sh # ... and also joined as a cluster (direct calls node to node)
set -euo pipefail
cd "$(dirname "$0")/.."
MAX=${1:-100}
PORT=${PORT:-18290}
command -v schemathesis >/dev/null || pip install --quiet schemathesis
cargo build --quiet
DATA=$(mktemp -d)
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true; rm -rf "$DATA"' EXIT
export RUST_LOG=warn GORGON_ADMIN_EMAIL=admin@example.com GORGON_ADMIN_PASSWORD=fuzz-admin-password
BACKEND_CLUSTER=() FRONT_CLUSTER=()
if [ "${CLUSTER:-0}" = 1 ]; then
  SPLIT=1
  FRONT_CLUSTER=(--cluster-listen "127.0.0.1:$((PORT + 2))")
  BACKEND_CLUSTER=(--cluster-listen "127.0.0.1:$((PORT + 3))" --join "127.0.0.1:$((PORT + 2))")
fi
if [ "${SPLIT:-0}" = 1 ]; then
  REDIS_PORT=$((PORT + 1))
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --dir "$DATA" >/dev/null &
  PIDS+=($!)
  export GORGON_REDIS_URL="redis://127.0.0.1:$REDIS_PORT" GORGON_REDIS_NAMESPACE=fuzz
  target/debug/gorgon run --roles auth,app,store,provider,stats --data "$DATA" --login-per-minute 1000000 \
    "${BACKEND_CLUSTER[@]}" &
  PIDS+=($!)
  target/debug/gorgon run --roles web,notify --listen "127.0.0.1:$PORT" "${FRONT_CLUSTER[@]}" &
  PIDS+=($!)
else
  target/debug/gorgon run --data "$DATA" --listen "127.0.0.1:$PORT" --login-per-minute 1000000 &
  PIDS+=($!)
fi
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null && break; sleep 0.2; done
# The admin exists once the node with the store role has started (with SPLIT, maybe after the front).
TOKEN=""
for _ in $(seq 50); do
  TOKEN=$(curl -s -X POST "http://127.0.0.1:$PORT/api/v1/auth/login" \
    -d '{"email":"admin@example.com","password":"fuzz-admin-password"}' |
    python3 -c 'import json,sys; print(json.load(sys.stdin).get("token", ""))' 2>/dev/null || true)
  [ -n "$TOKEN" ] && break
  sleep 0.2
done
[ -n "$TOKEN" ] || { echo "could not log in as the admin" >&2; exit 1; }
# /api/v1/events and /api/v1/ws are endless streams, which a request/response fuzzer cannot judge.
schemathesis run "http://127.0.0.1:$PORT/api/v1/openapi.json" -H "Authorization: Bearer $TOKEN" \
  --checks all --max-examples "$MAX" --exclude-path /api/v1/events --exclude-path /api/v1/ws
