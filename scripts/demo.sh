#!/usr/bin/env bash
# Installs Sweep with its worker, then runs `sweep demo`: a server on the embedded SQLite
# default, two local workers, the digits example, progress, and the best trial's weights.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh worker
exec .venv/bin/sweep demo "$@"
