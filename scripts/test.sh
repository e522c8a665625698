#!/usr/bin/env bash
# The README's test command: sets up what the tests need on a fresh Debian machine, then runs them.
# Safe to run again; installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v cc >/dev/null 2>&1 || need_apt+=(build-essential)
command -v kill >/dev/null 2>&1 || need_apt+=(procps)
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)   # promtool checks /metrics
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)     # renders /dashboard
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server) # Redis mailbox tests
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
  else
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
  fi
fi

if [ -z "${GORGON_TEST_MONGODB_URI:-}" ]; then
  echo "note: GORGON_TEST_MONGODB_URI is not set; there is no MongoDB backend in this build yet, so nothing is skipped for it."
fi

# The observability tests fail, rather than skip, when a tool above is missing.
export GORGON_REQUIRE_TOOLS=1
cargo test --all-targets "$@"
