#!/usr/bin/env bash
# Installs what the tests need, then runs lint, type checks and the whole test suite.
# PostgreSQL tests use 127.0.0.1:5432 (user postgres, database test; SWEEP_TEST_PG overrides);
# with CI=true they fail when it is unreachable instead of being skipped (so does the
# browser test without Chromium).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh worker,dev
# The dashboard test drives Debian's Chromium (installed here, never downloaded by the tests).
if ! command -v chromium >/dev/null; then
  sudo=$([ "$(id -u)" = 0 ] || echo sudo)
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null
fi
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/python -m pytest "$@"
