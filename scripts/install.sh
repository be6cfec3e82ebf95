#!/usr/bin/env bash
# Creates .venv (Python 3.11) and installs Sweep with the extras given (default: worker),
# skipping the work when nothing changed since the last install.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-worker}"
python="$(command -v python3.11 || command -v python3)"
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
fi
stamp=".venv/.sweep-installed-$extras"
fingerprint="$(cat pyproject.toml scripts/install.sh | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$fingerprint" ]; then
  # The CPU build of torch 2.13.0 first, so the worker extra's range takes it as it is.
  .venv/bin/python -m pip install -q torch==2.13.0
  .venv/bin/python -m pip install -q -e ".[$extras]"
  echo "$fingerprint" > "$stamp"
fi
