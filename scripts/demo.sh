#!/usr/bin/env bash
# One command on a fresh machine: install everything, then run the two-namespace demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/tunconnector demo "$@"
