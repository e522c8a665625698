#!/usr/bin/env bash
# A local Gorgon cluster in one command, for trying out "Scaling out" (README) on one machine:
# one redis-server and a few `gorgon run` nodes joined over loopback, each running a set of roles.
# Everything listens on 127.0.0.1 only; state, logs and pid files live in one directory.
#
# Usage:
#   scripts/cluster-demo.sh [start] [--nodes "web,notify;auth,app,store,stats,provider;auth,app"]
#                                   [--base-port 7100] [--bin PATH]
#   scripts/cluster-demo.sh status
#   scripts/cluster-demo.sh stop
#
#   --nodes      the nodes, separated by ';', each a ','-separated list of roles
#                (web, auth, app, store, provider, notify, stats, or all); exactly one node may
#                run store (the embedded store belongs to one process)
#   --base-port  ports used: node i's cluster listener BASE+1+i, Redis BASE+79,
#                node i's HTTP (web nodes only) BASE+80+i
#   --bin        the gorgon binary; default $GORGON_BIN, else target/release/gorgon, else it is
#                built with `cargo build --release`
#
# Environment: GORGON_DEMO_DIR (default /tmp/gorgon-cluster-demo) is the state directory.
# The processes keep running after `start` returns; `stop` ends them (SIGTERM: a graceful drain).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="${GORGON_DEMO_DIR:-/tmp/gorgon-cluster-demo}"
MARKER="$STATE/demo.conf"             # written by start; read by status and stop
DEFAULT_NODES="web,notify;auth,app,store,stats,provider;auth,app"
KNOWN_ROLES="web auth app store provider notify stats"
ADMIN_EMAIL="admin@example.com"
ADMIN_PASSWORD="admin-password-1"
REDIS_NAMESPACE="demo"
READY_TIMEOUT=60                      # seconds a node may take to print "gorgon node ready"
STOP_TIMEOUT=15                       # seconds a node may take to drain after SIGTERM

say() { printf '%s\n' "$*"; }
die() { printf 'cluster-demo: %s\n' "$*" >&2; exit 1; }

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }

# --- processes --------------------------------------------------------------------------------

# The pid in pid file $1 if that process is alive and, where ps can tell, its command line
# contains $2 (so a recycled pid is not taken for ours).
live_pid() {
  local file="$1" mark="$2" pid args
  [ -f "$file" ] || return 1
  pid="$(cat "$file" 2>/dev/null || true)"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  if command -v ps >/dev/null 2>&1; then
    args="$(ps -ww -p "$pid" -o args= 2>/dev/null || true)"
    [[ "$args" == *"$mark"* ]] || return 1
  fi
  printf '%s\n' "$pid"
}

# What identifies a node's process (its --data) and Redis's (its process title).
node_mark() { printf '%s' "$STATE/node-$1 "; }
REDIS_MARK="redis-server"

# Waits up to $2 seconds for pid $1 to exit; fails if it is still there.
wait_exit() {
  local pid="$1" deadline=$((SECONDS + $2))
  while kill -0 "$pid" 2>/dev/null; do
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 0.2
  done
}

# SIGTERM to every pid file given (in parallel), up to $STOP_TIMEOUT s to exit, SIGKILL after.
terminate() {
  local file pid pids=() files=()
  for file in "$@"; do
    if pid="$(live_pid "$file" "$(file_mark "$file")")"; then
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid"); files+=("$file")
    fi
    rm -f "$file"
  done
  local i
  for i in "${!pids[@]}"; do
    pid="${pids[$i]}"
    if wait_exit "$pid" "$STOP_TIMEOUT"; then
      say "  stopped $(basename "${files[$i]}" .pid) (pid $pid)"
    else
      kill -KILL "$pid" 2>/dev/null || true
      say "  killed $(basename "${files[$i]}" .pid) (pid $pid): still running ${STOP_TIMEOUT}s after SIGTERM"
    fi
  done
  [ "${#pids[@]}" -gt 0 ]
}

# The index of node pid file $1 (…/node-3.pid: 3).
file_index() { local i="${1##*/node-}"; printf '%s' "${i%.pid}"; }

file_mark() {
  case "$1" in
    */redis.pid) printf '%s' "$REDIS_MARK" ;;
    *) node_mark "$(file_index "$1")" ;;
  esac
}

# Node pid files, in node order.
node_pid_files() {
  local f
  for f in "$STATE"/node-*.pid; do
    [ -e "$f" ] && printf '%s\t%s\n' "$(file_index "$f")" "$f"
  done | sort -n | cut -f2-
}

# True when any process of the state directory is alive.
demo_running() {
  local f
  live_pid "$STATE/redis.pid" "$REDIS_MARK" >/dev/null && return 0
  while read -r f; do
    [ -n "$f" ] && live_pid "$f" "$(file_mark "$f")" >/dev/null && return 0
  done < <(node_pid_files)
  return 1
}

# --- configuration ----------------------------------------------------------------------------

# Splits "$NODES" into the array NODE_ROLES (one normalized "a,b,c" per node) and checks it.
parse_nodes() {
  local spec entry role roles_out store_nodes=() seen=" "
  NODE_ROLES=()
  IFS=';' read -r -a spec <<< "$NODES"
  for entry in "${spec[@]}"; do
    entry="${entry//[[:space:]]/}"
    [ -n "$entry" ] || continue
    roles_out=""
    IFS=',' read -r -a roles <<< "$entry"
    for role in "${roles[@]}"; do
      [ -n "$role" ] || continue
      if [ "$role" != all ] && [[ " $KNOWN_ROLES " != *" $role "* ]]; then
        die "unknown role '$role' in --nodes (known: $KNOWN_ROLES, or all)"
      fi
      roles_out="${roles_out:+$roles_out,}$role"
    done
    [ -n "$roles_out" ] || continue
    NODE_ROLES+=("$roles_out")
  done
  [ "${#NODE_ROLES[@]}" -gt 0 ] || die "--nodes lists no node"
  [ "${#NODE_ROLES[@]}" -le 78 ] || die "at most 78 nodes (their ports would reach Redis's)"
  local i
  for i in "${!NODE_ROLES[@]}"; do
    has_role "$i" store && store_nodes+=("$i")
    for role in $KNOWN_ROLES; do has_role "$i" "$role" && seen+="$role "; done
  done
  if [ "${#store_nodes[@]}" -gt 1 ]; then
    local list="${store_nodes[*]}"
    die "--nodes puts the store role on ${#store_nodes[@]} nodes (${list// /, }): only one node may run \
it (the embedded store belongs to one process; gorgon refuses a second store node at start-up). Keep store on one node."
  fi
  [ "${#store_nodes[@]}" -eq 1 ] || say "warning: no node runs store: every request that reads or writes data will fail (503)"
  for role in $KNOWN_ROLES; do
    [[ "$seen" == *" $role "* ]] || say "warning: no node runs the $role role"
  done
}

# True when node $1 runs role $2 ("all" runs every role).
has_role() {
  local roles=",${NODE_ROLES[$1]},"
  [[ "$roles" == *",$2,"* || "$roles" == *",all,"* ]]
}

cluster_port() { echo $((BASE_PORT + 1 + $1)); }
http_port() { echo $((BASE_PORT + 80 + $1)); }
redis_port() { echo $((BASE_PORT + 79)); }

# The HTTP URL of the first web node, or nothing.
first_web_url() {
  local i
  for i in "${!NODE_ROLES[@]}"; do
    if has_role "$i" web; then echo "http://127.0.0.1:$(http_port "$i")"; return; fi
  done
}

load_state() {
  [ -f "$MARKER" ] || return 1
  # shellcheck disable=SC1090
  . "$MARKER"
  parse_nodes >/dev/null
}

# --- start ------------------------------------------------------------------------------------

find_binary() {
  if [ -n "${BIN:-}" ]; then :
  elif [ -n "${GORGON_BIN:-}" ]; then BIN="$GORGON_BIN"
  elif [ -x "$ROOT/target/release/gorgon" ]; then BIN="$ROOT/target/release/gorgon"
  else
    command -v cargo >/dev/null 2>&1 || die "no gorgon binary and no cargo to build one: install Rust (https://rustup.rs) or pass --bin PATH"
    say "No target/release/gorgon: building it (cargo build --release in $ROOT)..."
    (cd "$ROOT" && cargo build --release)
    BIN="$ROOT/target/release/gorgon"
  fi
  [ -x "$BIN" ] || die "the gorgon binary $BIN does not exist or is not executable"
  BIN="$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")"
}

need_redis() {
  if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
    say "cluster-demo: redis-server (and redis-cli) are needed but not on PATH. Install them with:" >&2
    say "  sudo apt-get install -y redis-server      # Debian/Ubuntu (brew install redis on macOS)" >&2
    exit 1
  fi
}

# Fails when something already listens on 127.0.0.1:$1.
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

check_ports() {
  local i port ports=("$(redis_port)")
  for i in "${!NODE_ROLES[@]}"; do
    ports+=("$(cluster_port "$i")")
    has_role "$i" web && ports+=("$(http_port "$i")")
  done
  for port in "${ports[@]}"; do
    [ "$port" -le 65535 ] || die "port $port is out of range: choose a lower --base-port"
    port_free "$port" || die "127.0.0.1:$port is already in use: stop what uses it or choose another --base-port"
  done
}

# Wipes the state directory, but only one that is empty or was made by this script.
fresh_state_dir() {
  if [ -d "$STATE" ] && [ -n "$(ls -A "$STATE")" ] && [ ! -f "$MARKER" ]; then
    die "$STATE exists and is not a demo directory (no demo.conf): refusing to wipe it; set GORGON_DEMO_DIR elsewhere"
  fi
  rm -rf "$STATE"
  mkdir -p "$STATE/redis"
  {
    printf 'NODES=%q\n' "$NODES"
    printf 'BASE_PORT=%q\n' "$BASE_PORT"
    printf 'BIN=%q\n' "$BIN"
  } > "$MARKER"
}

start_redis() {
  local port deadline
  port="$(redis_port)"
  say "Starting redis-server on 127.0.0.1:$port (AOF everysec, data in $STATE/redis)"
  redis-server --bind 127.0.0.1 --port "$port" --dir "$STATE/redis" \
    --appendonly yes --appendfsync everysec --save '' \
    --daemonize yes --pidfile "$STATE/redis.pid" --logfile "$STATE/redis.log" >/dev/null
  deadline=$((SECONDS + 10))
  until [ "$(redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null)" = PONG ]; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      say "redis-server did not answer PING within 10 s; its log ($STATE/redis.log):" >&2
      tail -n 20 "$STATE/redis.log" >&2 2>/dev/null || true
      abort_start
    fi
    sleep 0.2
  done
}

# Its arguments as one shell command line (quoted only where needed), for logs and messages.
shell_words() {
  local a out=""
  for a in "$@"; do
    [[ "$a" =~ ^[A-Za-z0-9_./:=,@+-]+$ ]] || a="$(printf '%q' "$a")"
    out="${out:+$out }$a"
  done
  printf '%s\n' "$out"
}

# Starts node $1 in the background, in its own session so it outlives this script.
start_node() {
  local i="$1" args env_vars=()
  args=(run --roles "${NODE_ROLES[$i]}" --data "$STATE/node-$i"
        --cluster-listen "127.0.0.1:$(cluster_port "$i")"
        --redis "redis://127.0.0.1:$(redis_port)" --redis-namespace "$REDIS_NAMESPACE")
  [ "$i" -eq 0 ] || args+=(--join "127.0.0.1:$(cluster_port 0)")
  has_role "$i" web && args+=(--listen "127.0.0.1:$(http_port "$i")")
  has_role "$i" store && env_vars=(GORGON_ADMIN_EMAIL="$ADMIN_EMAIL" GORGON_ADMIN_PASSWORD="$ADMIN_PASSWORD")
  mkdir -p "$STATE/node-$i"
  shell_words ${env_vars[@]+"${env_vars[@]}"} "$BIN" "${args[@]}" > "$STATE/node-$i.cmd"
  # Its own session (setsid, where there is one) so it outlives this script and the terminal. A
  # background job is not a process-group leader, so setsid execs in place: $! is gorgon's pid.
  local detach=(nohup)
  command -v setsid >/dev/null 2>&1 && detach=(setsid nohup)
  env ${env_vars[@]+"${env_vars[@]}"} "${detach[@]}" "$BIN" "${args[@]}" > "$STATE/node-$i.log" 2>&1 < /dev/null &
  echo $! > "$STATE/node-$i.pid"
}

# Waits for node $1 to print "gorgon node ready"; on failure shows its log and stops everything.
wait_ready() {
  local i="$1" log="$STATE/node-$i.log" deadline=$((SECONDS + READY_TIMEOUT)) why=""
  while ! grep -q 'gorgon node ready' "$log" 2>/dev/null; do
    if ! kill -0 "$(cat "$STATE/node-$i.pid")" 2>/dev/null; then why="exited"; break; fi
    if [ "$SECONDS" -ge "$deadline" ]; then why="was not ready after ${READY_TIMEOUT}s"; break; fi
    sleep 0.3
  done
  [ -z "$why" ] && return 0
  say "node $i ($(tr -d '\n' < "$STATE/node-$i.cmd")) $why. Last lines of $log:" >&2
  tail -n 20 "$log" >&2 || true
  abort_start
}

abort_start() { exit 1; }

# The EXIT trap of start: whatever ended it early (a node that failed, an error, Ctrl-C), stops
# what it had started so nothing is left half-running.
start_cleanup() {
  local rc=$?
  [ "$START_DONE" = 1 ] && return 0
  say "Stopping what was started." >&2
  stop_all >&2 || true
  exit "$((rc == 0 ? 1 : rc))"
}

print_summary() {
  local i url web
  say ""
  printf '%-5s %-34s %-16s %-24s %s\n' node roles cluster http log
  for i in "${!NODE_ROLES[@]}"; do
    url="-"; has_role "$i" web && url="http://127.0.0.1:$(http_port "$i")"
    printf '%-5s %-34s %-16s %-24s %s\n' "$i" "${NODE_ROLES[$i]}" "127.0.0.1:$(cluster_port "$i")" "$url" "$STATE/node-$i.log"
  done
  printf '%-5s %-34s %-16s %-24s %s\n' redis "" "" "redis://127.0.0.1:$(redis_port)" "$STATE/redis.log"
  say ""
  if has_store_node; then say "Admin: $ADMIN_EMAIL / $ADMIN_PASSWORD"; fi
  web="$(first_web_url)"
  if [ -n "$web" ]; then
    say "Try:"
    say "  $web/dashboard"
    say "  curl -s $web/api/v1/cluster"
    say "  curl -s $web/readyz"
    say "Drive load against it:"
    say "  $BIN sim --target $web --users 200 --items 2000 --duration 20s"
  else
    say "No node runs web: there is no HTTP endpoint."
  fi
  say "Status: scripts/cluster-demo.sh status    Stop: scripts/cluster-demo.sh stop"
}

has_store_node() {
  local i
  for i in "${!NODE_ROLES[@]}"; do has_role "$i" store && return 0; done
  return 1
}

cmd_start() {
  parse_nodes
  [[ "$BASE_PORT" =~ ^[0-9]+$ ]] && [ "$BASE_PORT" -ge 1024 ] || die "--base-port must be a number from 1024 up"
  need_redis
  if demo_running; then
    die "a demo is already running in $STATE: scripts/cluster-demo.sh stop (or set GORGON_DEMO_DIR)"
  fi
  check_ports
  find_binary
  fresh_state_dir
  say "Gorgon cluster demo in $STATE, binary $BIN"
  START_DONE=0
  trap start_cleanup EXIT
  trap 'say "Interrupted." >&2; exit 130' INT TERM
  start_redis
  local i
  for i in "${!NODE_ROLES[@]}"; do
    say "Starting node $i (${NODE_ROLES[$i]})..."
    start_node "$i"
    wait_ready "$i"
  done
  START_DONE=1
  trap - INT TERM
  print_summary
}

# --- status and stop --------------------------------------------------------------------------

cmd_status() {
  if ! load_state; then say "No demo in $STATE."; return 0; fi
  local i pid state url
  say "Demo in $STATE (binary $BIN)"
  if pid="$(live_pid "$STATE/redis.pid" "$REDIS_MARK")"; then state="running (pid $pid)"; else state="not running"; fi
  printf '  %-7s %-34s %s\n' redis "redis://127.0.0.1:$(redis_port)" "$state"
  for i in "${!NODE_ROLES[@]}"; do
    if pid="$(live_pid "$STATE/node-$i.pid" "$(node_mark "$i")")"; then state="running (pid $pid)"; else state="not running"; fi
    printf '  %-7s %-34s %s\n' "node $i" "${NODE_ROLES[$i]}" "$state"
  done
  url="$(first_web_url)"
  [ -n "$url" ] && demo_running || return 0
  if ! command -v curl >/dev/null 2>&1 || ! command -v python3 >/dev/null 2>&1; then
    say "(curl and python3 are needed to show $url/api/v1/cluster)"
    return 0
  fi
  say "Cluster as $url sees it:"
  curl -s --max-time 5 "$url/api/v1/cluster" | python3 -c '
import json, sys
try:
    view = json.load(sys.stdin)
except ValueError:
    print("  (no answer)"); sys.exit(0)
for n in view.get("nodes", []):
    me = "  <- this node" if n.get("this_node") else ""
    print("  %-38s %-36s reachable=%s health=%s%s" % (n.get("node_id"), ",".join(n.get("roles", [])),
          n.get("reachable"), n.get("health"), me))
t = view.get("totals", {})
print("  %s nodes, %s healthy, %.1f req/s" % (t.get("nodes"), t.get("healthy_nodes"), t.get("requests_per_second", 0)))
' || true
}

# Stops the nodes (store node last, so the others can finish writes in flight), then Redis.
stop_all() {
  local f store_files=() other_files=() stopped=1
  while read -r f; do
    [ -n "$f" ] || continue
    local i; i="$(file_index "$f")"
    if [ "${#NODE_ROLES[@]}" -gt "$i" ] && has_role "$i" store; then store_files+=("$f"); else other_files+=("$f"); fi
  done < <(node_pid_files)
  [ "${#other_files[@]}" -eq 0 ] || { terminate "${other_files[@]}" && stopped=0; }
  [ "${#store_files[@]}" -eq 0 ] || { terminate "${store_files[@]}" && stopped=0; }
  terminate "$STATE/redis.pid" && stopped=0
  return "$stopped"
}

cmd_stop() {
  if [ ! -d "$STATE" ]; then say "No demo in $STATE: nothing to stop."; return 0; fi
  load_state || NODE_ROLES=()
  say "Stopping the demo in $STATE..."
  if stop_all; then say "Stopped. Logs and data stay in $STATE."; else say "Nothing was running."; fi
}

# --- main -------------------------------------------------------------------------------------

main() {
  local cmd=start
  case "${1:-}" in
    start|status|stop) cmd="$1"; shift ;;
    -h|--help|help) usage; exit 0 ;;
  esac
  NODES="$DEFAULT_NODES"; BASE_PORT=7100; BIN=""
  while [ $# -gt 0 ]; do
    case "$1" in
      --nodes) [ $# -ge 2 ] || die "--nodes needs a value"; NODES="$2"; shift 2 ;;
      --nodes=*) NODES="${1#*=}"; shift ;;
      --base-port) [ $# -ge 2 ] || die "--base-port needs a value"; BASE_PORT="$2"; shift 2 ;;
      --base-port=*) BASE_PORT="${1#*=}"; shift ;;
      --bin) [ $# -ge 2 ] || die "--bin needs a value"; BIN="$2"; shift 2 ;;
      --bin=*) BIN="${1#*=}"; shift ;;
      -h|--help) usage; exit 0 ;;
      *) die "unknown argument '$1' (see --help)" ;;
    esac
  done
  if [ "$cmd" != start ] && [ "$NODES$BASE_PORT$BIN" != "${DEFAULT_NODES}7100" ]; then
    die "$cmd takes no options (it reads $MARKER)"
  fi
  "cmd_$cmd"
}

main "$@"
