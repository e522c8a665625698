#!/usr/bin/env bash
# The README's test command: sets up what the tests need on a fresh Debian machine, then runs them.
# Safe to run again; installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v cc >/dev/null 2>&1 || need_apt+=(build-essential)
command -v kill >/dev/null 2>&1 || need_apt+=(procps)
# promtool checks /metrics and the scrape configs; prometheus runs the dashboard's queries
{ command -v promtool && command -v prometheus; } >/dev/null 2>&1 || need_apt+=(prometheus)
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)     # renders /dashboard
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server) # Redis mailbox tests
[ -x /usr/sbin/haproxy ] || command -v haproxy >/dev/null 2>&1 || need_apt+=(haproxy) # tests/haproxy.rs
# tests/deploy.rs: compose.yaml checked offline (docker-compose 1.x needs no engine for `config`),
# the systemd units verified (systemd-analyze; no running systemd needed).
command -v docker-compose >/dev/null 2>&1 || need_apt+=(docker-compose)
command -v systemd-analyze >/dev/null 2>&1 || need_apt+=(systemd)
# PostgreSQL's server programs (initdb, postgres, pg_basebackup, pg_ctl): each test binary makes
# its own throwaway clusters (tests/common/postgres.rs); the package also creates the `postgres`
# user the servers run as when the tests run as root (PostgreSQL refuses root).
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql)
# A venv for the MongoDB test server (SecantusDB, below).
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need_apt+=(python3 python3-venv)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
  else
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
  fi
fi

# Test tools from PyPI, each in a venv of its own under ~/.cache/gorgon (installed at test time,
# never vendored; installed once: later runs find them).
# usage: pip_venv DIR "WHAT (why)" PACKAGE==VERSION CHECK-COMMAND...   (CHECK runs inside DIR/bin)
pip_venv() {
  local dir=$1 what=$2 package=$3; shift 3
  if ! ( cd "$dir/bin" 2>/dev/null && "$@" ) >/dev/null 2>&1; then
    echo "installing $what into $dir"
    python3 -m venv "$dir"
    "$dir/bin/pip" install -q --disable-pip-version-check "$package"
  fi
}

# The MongoDB store's tests run against SecantusDB, a MongoDB wire-protocol server (GPL-2.0);
# each test binary starts its own on a free port.
secantus_venv="${GORGON_TEST_VENV:-$HOME/.cache/gorgon/secantus-venv}"
pip_venv "$secantus_venv" "SecantusDB (the MongoDB test server)" "secantusdb==0.7.0b3" test -x secantusd-py
export GORGON_SECANTUSD="$secantus_venv/bin/secantusd-py"

# tests/deploy.rs validates deploy/k8s against the Kubernetes schemas with kubernetes-validate
# (Apache-2.0, the schemas bundled: it needs no cluster and no network once installed).
k8s_venv="${GORGON_TEST_K8S_VENV:-$HOME/.cache/gorgon/k8s-venv}"
pip_venv "$k8s_venv" "kubernetes-validate" "kubernetes-validate==1.37.0" test -x kubernetes-validate
export GORGON_K8S_VALIDATE="$k8s_venv/bin/kubernetes-validate"

# The operator console's browser test (tests/console.rs) drives the system Chromium with
# Playwright for Python (Apache-2.0); its bundled browsers are never downloaded (`playwright
# install` is not run): the test launches /usr/bin/chromium.
playwright_venv="${GORGON_TEST_PLAYWRIGHT_VENV:-$HOME/.cache/gorgon/playwright-venv}"
pip_venv "$playwright_venv" "Playwright for Python (drives Chromium in tests/console.rs)" \
  "playwright==1.65.2" ./python -c 'import playwright.sync_api'
export GORGON_TEST_PLAYWRIGHT_VENV="$playwright_venv"

# Debian keeps the server programs off PATH; the tests look in /usr/lib/postgresql/*/bin, and
# GORGON_PG_BIN names the newest for them (and for anyone reading this).
if [ -z "${GORGON_PG_BIN:-}" ]; then
  pg_bin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
  if [ -n "$pg_bin" ]; then export GORGON_PG_BIN="$pg_bin"; fi
fi
if [ -z "${GORGON_TEST_POSTGRES_URI:-}" ]; then
  echo "note: GORGON_TEST_POSTGRES_URI is not set: the store contract runs on PostgreSQL against the clusters the tests make only (set it to a postgres:// URL of a server whose user may create databases to run it there too)."
fi

if [ -z "${GORGON_TEST_MONGODB_URI:-}" ]; then
  echo "note: GORGON_TEST_MONGODB_URI is not set: the store contract runs on MongoDB against SecantusDB only, not against a real MongoDB replica set (set it to a mongodb:// URL of one to run it there too)."
fi

# Tests fail, rather than skip, when a tool above is missing (redis-server, SecantusDB, ...).
export GORGON_REQUIRE_TOOLS=1
cargo test --all-targets "$@"

# The API, its edges and its security once more with the nodes on MongoDB: bad input gets the same
# answers on both backends (tests/common/mod.rs reads GORGON_TEST_API_STORE).
if [ $# -eq 0 ]; then
  GORGON_TEST_API_STORE=mongodb cargo test --test api --test edge --test security
fi
