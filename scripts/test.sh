#!/usr/bin/env bash
# Installs what the tests need, then runs lint, type checks and the whole test suite.
# PostgreSQL tests use 127.0.0.1:5432 (user postgres, database test; SWEEP_TEST_PG overrides);
# with CI=true they fail when it is unreachable instead of being skipped (so does the
# browser test without Chromium).
#
#   scripts/test.sh              everything (what CI runs)
#   scripts/test.sh --fast       lint, types, and the tests on SQLite that start no server,
#                                worker or pool process (markers `processes`, `postgres`)
#   scripts/test.sh -k leases    other arguments go to pytest
#
# Tests run in parallel, one pytest process per core (`-n 0` as an argument: in one).
set -euo pipefail
cd "$(dirname "$0")/.."
fast=false
if [ "${1:-}" = "--fast" ]; then
  fast=true
  shift
fi
scripts/install.sh worker,dev
# The dashboard test drives Debian's Chromium (installed here, never downloaded by the tests).
if ! $fast && ! command -v chromium >/dev/null; then
  sudo=$([ "$(id -u)" = 0 ] || echo sudo)
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null
fi
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
parallel=(-n auto --dist worksteal)
if $fast; then
  exec .venv/bin/python -m pytest "${parallel[@]}" -m "not processes and not postgres" "$@"
fi
exec .venv/bin/python -m pytest "${parallel[@]}" "$@"
