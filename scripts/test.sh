#!/usr/bin/env bash
# One command on a fresh machine: install everything, then run the whole test suite
# (unit, integration in network namespaces, kernel bond in a QEMU VM).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# the slowest cases with their times: the container and VM parts show their cost
exec .venv/bin/python -m pytest -q -ra --durations=15 "$@"
