#!/usr/bin/env bash
# HTTP benchmark of one node on the embedded store (issue: foundation).
#
# Seeds a fresh store (default 10k users, 1M items), starts `gorgon run` on it, and measures with
# real load tools on loopback, in one run:
#   - closed loop (wrk -t2 -c64 -d10s): /healthz (this machine's ceiling), GET /api/v1/items/{id},
#     GET /api/v1/users/{id}/items?limit=10, each with the ratio to the ceiling;
#   - open loop at a fixed rate (oha -q RATE), where p99 means something.
# Everything targets 127.0.0.1 and stops by itself. Installs wrk (apt) and oha (cargo) if absent.
#
# usage: bench/http.sh [ITEMS] [USERS]      env: RATE=5000 DURATION=10s CONNECTIONS=64
set -euo pipefail
cd "$(dirname "$0")/.."
ITEMS=${1:-1000000}
USERS=${2:-10000}
RATE=${RATE:-5000}
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
PORT=${PORT:-18181}

command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
command -v oha >/dev/null || cargo install oha --locked --quiet
cargo build --release --quiet
BIN=target/release/gorgon

WORK=$(mktemp -d)
trap 'kill $SERVER 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"' EXIT

echo "== seeding $USERS users, $ITEMS items"
$BIN seed --users "$USERS" --items "$ITEMS" --data "$WORK/data" \
  --item-ids-out "$WORK/items.txt" --user-ids-out "$WORK/users.txt" | tail -1

RUST_LOG=warn $BIN run --data "$WORK/data" --listen "127.0.0.1:$PORT" >"$WORK/server.log" 2>&1 &
SERVER=$!
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null && break; sleep 0.2; done

BASE="http://127.0.0.1:$PORT"
declare -A RPS P50 P99
closed() { # name, wrk args...
  local name=$1; shift
  local out; out=$(wrk -t2 -c"$CONNECTIONS" -d"$DURATION" --latency "$@")
  RPS[$name]=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  P50[$name]=$(awk '$1=="50%" {print $2}' <<<"$out")
  P99[$name]=$(awk '$1=="99%" {print $2}' <<<"$out")
  local non2xx; non2xx=$(awk '/Non-2xx/ {print $NF}' <<<"$out")
  printf '%-28s %10s req/s  p50 %-9s p99 %-9s %s\n' "$name" "${RPS[$name]}" "${P50[$name]}" "${P99[$name]}" "${non2xx:+non-2xx: $non2xx}"
}

echo "== closed loop: wrk -t2 -c$CONNECTIONS -d$DURATION (load tool on the same cores)"
wrk -t2 -c"$CONNECTIONS" -d2s "$BASE/healthz" >/dev/null  # warm-up
closed healthz "$BASE/healthz"
closed item_by_id -s bench/random_path.lua "$BASE" -- '/api/v1/items/%s' "$WORK/items.txt"
closed user_newest_10 -s bench/random_path.lua "$BASE" -- '/api/v1/users/%s/items?limit=10' "$WORK/users.txt"

echo "== ratios to the /healthz ceiling"
for name in item_by_id user_newest_10; do
  awk -v a="${RPS[$name]}" -v b="${RPS[healthz]}" -v n="$name" 'BEGIN { printf "%-28s %5.1f%%\n", n, 100*a/b }'
done

echo "== open loop: oha -q $RATE -z $DURATION (latency from the intended send time)"
sed "s|^|$BASE/api/v1/items/|" "$WORK/items.txt" > "$WORK/item_urls.txt"
sed "s|^|$BASE/api/v1/users/|; s|$|/items?limit=10|" "$WORK/users.txt" > "$WORK/user_urls.txt"
for f in item_urls user_urls; do
  out=$(oha --no-tui -q "$RATE" -z "$DURATION" -c "$CONNECTIONS" --latency-correction --urls-from-file "$WORK/$f.txt" 2>&1)
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '/50.00% in/ {print $3, $4}' <<<"$out")
  p99=$(awk '/99.00% in/ {print $3, $4}' <<<"$out")
  codes=$(grep -oE '\[[0-9]+\] [0-9]+ responses' <<<"$out" | tr '\n' ' ')
  printf '%-28s %10s req/s  p50 %-14s p99 %-14s %s\n' "$f@$RATE/s" "$rps" "$p50" "$p99" "$codes"
done
