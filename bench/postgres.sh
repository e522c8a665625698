#!/usr/bin/env bash
# PostgreSQL shared store benchmark (issue 16, "Benchmarks"), in one run, against a PostgreSQL 15
# this script starts itself in a temporary directory (loopback, fsync on, shared_buffers 1GB,
# max_connections 200, trust auth) and stops at the end:
#
#   1. sim:  `gorgon sim` on the embedded store, then `gorgon sim --store postgres://…`, same
#            scenario, back to back: reads/s, writes/s, searches/s, p99 of each, seed time; pg/embedded.
#   2. http: Gorgon (`gorgon run --store postgres://…`) vs the peer bench/peers/fastify-pg (Node.js,
#            Fastify + pg, one process, pool of 10), both reading the SAME database Gorgon seeded,
#            one server at a time, wrk with the same settings and the same random ids;
#            GET an item by id and a user's newest 10; Gorgon/peer (goal >= 3x).
#   3. seed: `gorgon seed --store postgres://…` vs a raw baseline in the same session: the same rows
#            (dumped from Gorgon's load with COPY TO, file in page cache) loaded with one binary
#            `COPY items FROM file` into an empty copy of the schema, then the same two secondary
#            indexes built side by side, then ANALYZE; gorgon/raw (goal <= 1.20).
#
# usage: bench/postgres.sh
# env (defaults):  PHASES=sim,http,seed
#   SIM_USERS=10000 SIM_ITEMS=1000000 SIM_DURATION=30s
#   HTTP_USERS=10000 HTTP_ITEMS=1000000 WRK_THREADS=2 WRK_CONNECTIONS=64 WRK_DURATION=10s
#   WRK_WARMUP=3s ROUNDS=3 (rounds of gorgon-then-peer; medians printed)
#   SEED_USERS=10000 SEED_ITEMS=1000000 (SEED_ITEMS=10000000 for the 10M run)
#   GORGON_BIN=path (else: cargo build --release under flock /tmp/gorgon-cargo.lock, binary copied)
#   GORGON_PG_BIN=/usr/lib/postgresql/15/bin  BENCH_TMP=/tmp
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

PHASES=${PHASES:-sim,http,seed}
SIM_USERS=${SIM_USERS:-10000}
SIM_ITEMS=${SIM_ITEMS:-1000000}
SIM_DURATION=${SIM_DURATION:-30s}
HTTP_USERS=${HTTP_USERS:-10000}
HTTP_ITEMS=${HTTP_ITEMS:-1000000}
WRK_THREADS=${WRK_THREADS:-2}
WRK_CONNECTIONS=${WRK_CONNECTIONS:-64}
WRK_DURATION=${WRK_DURATION:-10s}
WRK_WARMUP=${WRK_WARMUP:-3s}
ROUNDS=${ROUNDS:-3}
SEED_USERS=${SEED_USERS:-10000}
SEED_ITEMS=${SEED_ITEMS:-1000000}
PG_BIN=${GORGON_PG_BIN:-/usr/lib/postgresql/15/bin}
PEER_DIR=$ROOT/bench/peers/fastify-pg
SCHEMA_SQL=$ROOT/src/store/postgres/migrations/0001_schema.sql

loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
has_phase() { [[ ",$PHASES," == *",$1,"* ]]; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 == 0) print "n/a"; else printf "%.2f", a / b }'; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR+1)/2]; else printf "%.2f\n", (v[NR/2] + v[NR/2+1]) / 2 }'; }
minmax() { tr ' ' '\n' | grep -v '^$' | sort -g | awk 'NR == 1 { lo = $1 } { hi = $1 } END { printf "%s-%s", lo, hi }'; }
# wrk latencies (850.00us, 2.10ms, 1.02s) in ms, one per line
to_ms() { printf '%s\n' "$@" | awk '/us$/ { printf "%.3f\n", $1 / 1000; next } /ms$/ { printf "%.2f\n", $1 + 0; next } /s$/ { printf "%.1f\n", $1 * 1000 }'; }
# runs a command as the postgres user when we are root (PostgreSQL refuses to run as root)
as_pg() { if [[ $(id -u) == 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi; }

command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
command -v jq >/dev/null || { apt-get update -qq && apt-get install -y -qq jq >/dev/null; }
[[ -x $PG_BIN/postgres ]] || { echo "no PostgreSQL at $PG_BIN (set GORGON_PG_BIN)" >&2; exit 1; }

WORK=$(mktemp -d "${BENCH_TMP:-/tmp}/gorgon-pg-bench.XXXXXX")
chmod 755 "$WORK"
PGDATA_DIR=$WORK/pg
SERVER=""
PG_STARTED=""
cleanup() {
  local rc=$?
  if [[ -n $SERVER ]]; then kill "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true; fi
  if [[ -n $PG_STARTED ]]; then
    as_pg "$PG_BIN/pg_ctl" stop -D "$PGDATA_DIR" -m fast >/dev/null 2>&1 || true
    echo "PostgreSQL stopped, $WORK removed"
  fi
  rm -rf "$WORK"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [[ -n ${GORGON_BIN:-} ]]; then
  cp "$GORGON_BIN" "$WORK/gorgon"
else
  flock /tmp/gorgon-cargo.lock cargo build --release --quiet --bin gorgon
  cp target/release/gorgon "$WORK/gorgon"
fi
BIN=$WORK/gorgon
echo "gorgon: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'), $(nproc) cores, $(date -u +%FT%TZ), load average $(cut -d' ' -f1-3 /proc/loadavg) (figures are only comparable on a quiet machine)"

# ---------------------------------------------------------------- PostgreSQL
PGPORT=$(free_port)
mkdir -p "$PGDATA_DIR"
if [[ $(id -u) == 0 ]]; then chown postgres: "$PGDATA_DIR"; fi
as_pg "$PG_BIN/initdb" -D "$PGDATA_DIR" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null
as_pg "$PG_BIN/pg_ctl" start -D "$PGDATA_DIR" -w -t 60 -l "$PGDATA_DIR/server.log" \
  -o "-c listen_addresses=127.0.0.1 -c port=$PGPORT -c unix_socket_directories=$PGDATA_DIR \
      -c fsync=on -c synchronous_commit=on -c shared_buffers=1GB -c max_connections=200" >/dev/null
PG_STARTED=1
PG_URL="postgres://postgres@127.0.0.1:$PGPORT"
sql() { local db=$1; shift; "$PG_BIN/psql" -X -q -A -t -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PGPORT" -U postgres -d "$db" "$@"; }
echo "PostgreSQL $(sql postgres -c 'SHOW server_version') on 127.0.0.1:$PGPORT: fsync $(sql postgres -c 'SHOW fsync'), shared_buffers $(sql postgres -c 'SHOW shared_buffers'), max_connections $(sql postgres -c 'SHOW max_connections')"

wait_http() { # url, pid
  for _ in $(seq 150); do
    curl -sf -o /dev/null "$1" && return 0
    kill -0 "$2" 2>/dev/null || { echo "server died: $1" >&2; return 1; }
    sleep 0.2
  done
  echo "not ready: $1" >&2; return 1
}
stop_server() {
  if [[ -n $SERVER ]]; then kill "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true; fi
  SERVER=""
}

# ---------------------------------------------------------------- 1. sim
if has_phase sim; then
  echo
  echo "== 1. gorgon sim: embedded vs PostgreSQL (--users $SIM_USERS --items $SIM_ITEMS --duration $SIM_DURATION, default mix), back to back [load $(loadavg)]"
  declare -A SIM_RC
  for kind in embedded postgres; do
    store=()
    if [[ $kind == postgres ]]; then
      sql postgres -c 'CREATE DATABASE simdb'
      store=(--store "$PG_URL/simdb")
    fi
    sql postgres -c 'CHECKPOINT'
    rc=0
    TMPDIR=$WORK "$BIN" sim --users "$SIM_USERS" --items "$SIM_ITEMS" --duration "$SIM_DURATION" \
      "${store[@]}" --json "$WORK/sim-$kind.json" >"$WORK/sim-$kind.log" 2>&1 || rc=$?
    SIM_RC[$kind]=$rc
    [[ -s $WORK/sim-$kind.json ]] || { echo "sim on $kind failed (exit $rc):"; tail -20 "$WORK/sim-$kind.log"; exit 1; }
    if [[ $kind == postgres ]]; then sql postgres -c 'DROP DATABASE simdb'; fi
  done
  sim_fig() { # kind, op, field (achieved_rate | p99_ms)
    jq -r --arg op "$2" --arg f "$3" '.phases[-1].operations[] | select(.op == $op) | .[$f]' "$WORK/sim-$1.json"
  }
  sim_top() { jq -r "$2" "$WORK/sim-$1.json"; }
  printf '%-22s %14s %14s %10s\n' "" embedded postgres pg/emb
  for op in read write search; do
    e=$(sim_fig embedded $op achieved_rate); p=$(sim_fig postgres $op achieved_rate)
    label=${op}s/s; [[ $op == search ]] && label=searches/s
    printf '%-22s %14.1f %14.1f %10s\n' "$label" "$e" "$p" "$(ratio "$p" "$e")"
  done
  for op in read write search; do
    e=$(sim_fig embedded $op p99_ms); p=$(sim_fig postgres $op p99_ms)
    printf '%-22s %14.2f %14.2f %10s\n' "$op p99 (ms)" "$e" "$p" "$(ratio "$p" "$e")"
  done
  for op in read write search; do
    e=$(sim_fig embedded $op errors); p=$(sim_fig postgres $op errors)
    printf '%-22s %14s %14s\n' "$op errors" "$e" "$p"
  done
  e=$(sim_top embedded .seed_seconds); p=$(sim_top postgres .seed_seconds)
  printf '%-22s %14.1f %14.1f %10s\n' "seed (s)" "$e" "$p" "$(ratio "$p" "$e")"
  printf '%-22s %14s %14s\n' "provider items/s" "$(sim_top embedded '.provider_achieved_rate // "n/a" | if type == "number" then floor else . end')" \
    "$(sim_top postgres '.provider_achieved_rate // "n/a" | if type == "number" then floor else . end')"
  printf '%-22s %14s %14s\n' "peak RSS (MiB)" "$(sim_top embedded '.peak_rss_mb // "n/a" | if type == "number" then floor else . end')" \
    "$(sim_top postgres '.peak_rss_mb // "n/a" | if type == "number" then floor else . end')"
  printf '%-22s %14s %14s\n' "invariants" "$(sim_top embedded 'if .passed then "PASS" else "FAIL" end')" \
    "$(sim_top postgres 'if .passed then "PASS" else "FAIL" end')"
  echo "(closed loop, $(jq -r '.scenario.clients // "default"' "$WORK/sim-embedded.json") clients, sim and node in one process; PostgreSQL runs on the same 2 cores)"
fi

# ---------------------------------------------------------------- 2. http
if has_phase http; then
  echo
  echo "== 2. HTTP: Gorgon on PostgreSQL vs Fastify + pg (pool 10), same database, $HTTP_ITEMS items / $HTTP_USERS users [load $(loadavg)]"
  [[ -d $PEER_DIR/node_modules ]] || (cd "$PEER_DIR" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
  sql postgres -c 'CREATE DATABASE bench'
  t0=$(now)
  "$BIN" seed --store "$PG_URL/bench" --users "$HTTP_USERS" --items "$HTTP_ITEMS" \
    --item-ids-out "$WORK/items.txt" --user-ids-out "$WORK/users.txt" >"$WORK/seed-http.log" 2>&1 \
    || { tail -20 "$WORK/seed-http.log"; exit 1; }
  echo "seeded in $(elapsed "$t0" "$(now)") s: $(grep -o 'seeded .*' "$WORK/seed-http.log" | tail -1)"
  # Same starting state for both servers: vacuumed (hint bits set, visibility map), analyzed,
  # table and indexes read into shared_buffers.
  sql bench -c 'VACUUM (ANALYZE) items' -c 'CREATE EXTENSION IF NOT EXISTS pg_prewarm' \
    -c "SELECT pg_prewarm(c) FROM unnest(ARRAY['items','items_pkey','items_user_newest']) c" >/dev/null
  echo "items: $(sql bench -c "SELECT count(*) FROM items") rows, table $(sql bench -c "SELECT pg_size_pretty(pg_table_size('items'))"), indexes $(sql bench -c "SELECT pg_size_pretty(pg_indexes_size('items'))"); ids for wrk: $(wc -l <"$WORK/items.txt") items, $(wc -l <"$WORK/users.txt") users"

  G_PORT=$(free_port); P_PORT=$(free_port)
  declare -A RPS P50 P99 BAD
  wrk_run() { # key, base, path format, ids file
    local out
    wrk -t"$WRK_THREADS" -c"$WRK_CONNECTIONS" -d"$WRK_WARMUP" -s bench/random_path.lua "$2" -- "$3" "$4" >/dev/null
    out=$(wrk -t"$WRK_THREADS" -c"$WRK_CONNECTIONS" -d"$WRK_DURATION" --latency -s bench/random_path.lua "$2" -- "$3" "$4")
    RPS[$1]+=" $(awk '/Requests\/sec/ {print $2}' <<<"$out")"
    P50[$1]+=" $(awk '$1=="50%" {print $2}' <<<"$out")"
    P99[$1]+=" $(awk '$1=="99%" {print $2}' <<<"$out")"
    local bad; bad=$(awk '/Non-2xx/ {print $NF}' <<<"$out"); local errs; errs=$(awk '/Socket errors/' <<<"$out")
    BAD[$1]=$(( ${BAD[$1]:-0} + ${bad:-0} ))
    if [[ -n $errs ]]; then echo "  $1: $errs"; fi
    return 0
  }
  check() { # url: must answer 200 with JSON
    local code; code=$(curl -s -o "$WORK/check.json" -w '%{http_code}' "$1")
    [[ $code == 200 ]] || { echo "GET $1 answered $code: $(head -c 300 "$WORK/check.json")" >&2; exit 1; }
  }
  uid=$(head -1 "$WORK/users.txt"); iid=$(head -1 "$WORK/items.txt")
  for round in $(seq "$ROUNDS"); do
    # Gorgon: the whole node (all roles), its PostgreSQL pool (16 connections, not configurable)
    RUST_LOG=warn "$BIN" run --store "$PG_URL/bench" --data "$WORK/run-data" \
      --listen "127.0.0.1:$G_PORT" >>"$WORK/gorgon-run.log" 2>&1 &
    SERVER=$!
    wait_http "http://127.0.0.1:$G_PORT/readyz" "$SERVER"
    base="http://127.0.0.1:$G_PORT"
    check "$base/api/v1/items/$iid"; check "$base/api/v1/users/$uid/items?limit=10"
    wrk_run gorgon_item "$base" '/api/v1/items/%s' "$WORK/items.txt"
    wrk_run gorgon_newest "$base" '/api/v1/users/%s/items?limit=10' "$WORK/users.txt"
    wrk_run gorgon_info "$base" '/info/%s' "$WORK/users.txt"
    stop_server
    # the peer
    (cd "$PEER_DIR" && DATABASE_URL="$PG_URL/bench" PORT=$P_PORT POOL=10 exec node server.js) >>"$WORK/peer.log" 2>&1 &
    SERVER=$!
    wait_http "http://127.0.0.1:$P_PORT/healthz" "$SERVER"
    base="http://127.0.0.1:$P_PORT"
    check "$base/items/$iid"; check "$base/users/$uid/items?limit=10"
    wrk_run peer_item "$base" '/items/%s' "$WORK/items.txt"
    wrk_run peer_newest "$base" '/users/%s/items?limit=10' "$WORK/users.txt"
    stop_server
    echo "  round $round/$ROUNDS: item gorgon $(awk '{print $NF}' <<<"${RPS[gorgon_item]}") peer $(awk '{print $NF}' <<<"${RPS[peer_item]}"); newest gorgon $(awk '{print $NF}' <<<"${RPS[gorgon_newest]}") peer $(awk '{print $NF}' <<<"${RPS[peer_newest]}") req/s"
  done
  echo "wrk -t$WRK_THREADS -c$WRK_CONNECTIONS -d$WRK_DURATION --latency, $WRK_WARMUP warm-up before each, $ROUNDS rounds (Gorgon then peer, one server up at a time), medians [range]:"
  printf '%-46s %22s %9s %9s %8s\n' "system x route" "req/s" "p50" "p99" "non-2xx"
  row() { printf '%-46s %9s [%11s] %9s %9s %8s\n' "$1" "$(median <<<"${RPS[$2]}")" "$(minmax <<<"${RPS[$2]}")" \
    "$(to_ms ${P50[$2]} | median)ms" "$(to_ms ${P99[$2]} | median)ms" "${BAD[$2]}"; }
  row "Gorgon  GET /api/v1/items/{id}" gorgon_item
  row "peer    GET /items/:id" peer_item
  row "Gorgon  GET /api/v1/users/{id}/items?limit=10" gorgon_newest
  row "peer    GET /users/:id/items?limit=10" peer_newest
  row "Gorgon  GET /info/{uid} (newest 10, same query)" gorgon_info
  gi=$(median <<<"${RPS[gorgon_item]}"); pi=$(median <<<"${RPS[peer_item]}")
  gn=$(median <<<"${RPS[gorgon_newest]}"); pn=$(median <<<"${RPS[peer_newest]}")
  echo "ratio Gorgon/peer: by id $(ratio "$gi" "$pi")x, newest 10 $(ratio "$gn" "$pn")x (goal >= 3x)"
  echo "fairness: same PostgreSQL, same database and rows (Gorgon's tables, VACUUM ANALYZEd and prewarmed),"
  echo "  same SQL (the peer's prepared statements are Gorgon's), same wrk settings and id files, one server at a"
  echo "  time, each warmed up; wrk, server and PostgreSQL share the 2 cores. Differences: Gorgon's pool is 16"
  echo "  connections (fixed), the peer's 10 (as specified); Gorgon runs 2 HTTP workers and all its roles."
  sql postgres -c 'DROP DATABASE bench'
fi

# ---------------------------------------------------------------- 3. seed
if has_phase seed; then
  echo
  echo "== 3. bulk load: gorgon seed --store postgres:// vs raw COPY + the same indexes, $SEED_ITEMS items / $SEED_USERS users [load $(loadavg)]"
  sql postgres -c 'CREATE DATABASE seedbench'
  sql postgres -c 'CHECKPOINT'
  t0=$(now)
  "$BIN" seed --store "$PG_URL/seedbench" --users "$SEED_USERS" --items "$SEED_ITEMS" >"$WORK/seed.log" 2>&1 \
    || { tail -20 "$WORK/seed.log"; exit 1; }
  t1=$(now)
  G_WALL=$(elapsed "$t0" "$t1")
  G_SELF=$(grep -o 'seeded .*' "$WORK/seed.log" | tail -1)
  G_SIZE=$(sql seedbench -c "SELECT pg_size_pretty(pg_table_size('items')) || ' + indexes ' || pg_size_pretty(pg_indexes_size('items'))")
  # The same rows, as Gorgon stored them, to a file PostgreSQL reads (untimed); then free the disk.
  DUMP=$PGDATA_DIR/items.bin
  sql seedbench -c "COPY items TO '$DUMP' (FORMAT binary)"
  ROWS=$(sql seedbench -c 'SELECT count(*) FROM items')
  sql postgres -c 'DROP DATABASE seedbench'
  sql postgres -c 'CREATE DATABASE rawbench'
  sql rawbench -f "$SCHEMA_SQL" >/dev/null
  cat "$DUMP" >/dev/null   # in page cache, as Gorgon's rows are in its memory
  DUMP_SIZE=$(du -h "$DUMP" | cut -f1)
  sql postgres -c 'CHECKPOINT'
  r0=$(now)
  sql rawbench -c "COPY items FROM '$DUMP' (FORMAT binary)"
  r1=$(now)
  # the same two indexes as Gorgon's ITEM_INDEXES (src/store/postgres/migrations.rs), side by side,
  # with the maintenance_work_mem Gorgon's bulk load uses (256MB)
  sql rawbench -c "SET maintenance_work_mem = '256MB'" -c 'CREATE INDEX items_user_newest ON items (user_id, id DESC)' &
  i1=$!
  sql rawbench -c "SET maintenance_work_mem = '256MB'" -c 'CREATE INDEX items_words ON items USING gin (words)' &
  i2=$!
  wait $i1; wait $i2
  r2=$(now)
  sql rawbench -c 'ANALYZE items'
  r3=$(now)
  R_SIZE=$(sql rawbench -c "SELECT pg_size_pretty(pg_table_size('items')) || ' + indexes ' || pg_size_pretty(pg_indexes_size('items'))")
  sql postgres -c 'DROP DATABASE rawbench'
  rm -f "$DUMP"
  RAW_COPY=$(elapsed "$r0" "$r1"); RAW_IDX=$(elapsed "$r1" "$r2"); RAW_AN=$(elapsed "$r2" "$r3")
  RAW_CI=$(elapsed "$r0" "$r2"); RAW_ALL=$(elapsed "$r0" "$r3")
  printf '%-52s %10s\n' "gorgon seed, wall (process start to exit)" "$G_WALL s"
  printf '%-52s %s\n' "  gorgon's own report" "$G_SELF"
  printf '%-52s %s\n' "  stored" "$G_SIZE"
  printf '%-52s %10s\n' "raw COPY items FROM file (binary, $DUMP_SIZE, $ROWS rows)" "$RAW_COPY s"
  printf '%-52s %10s\n' "raw CREATE INDEX x2 (side by side)" "$RAW_IDX s"
  printf '%-52s %10s\n' "raw ANALYZE items" "$RAW_AN s"
  printf '%-52s %10s\n' "raw COPY + indexes" "$RAW_CI s"
  printf '%-52s %10s\n' "raw COPY + indexes + ANALYZE (Gorgon's end state)" "$RAW_ALL s"
  printf '%-52s %s\n' "  stored" "$R_SIZE"
  echo "ratio gorgon/raw: $(ratio "$G_WALL" "$RAW_CI") vs COPY+indexes, $(ratio "$G_WALL" "$RAW_ALL") vs COPY+indexes+ANALYZE (goal <= 1.20)"
  echo "note: gorgon's time includes generating the rows and their search words and loading $SEED_USERS users;"
  echo "  the raw COPY reads finished rows from a file in page cache, one COPY stream (gorgon: 2 in flight)."
fi

echo
echo "done, load average $(cut -d' ' -f1-3 /proc/loadavg)"
