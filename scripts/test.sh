#!/usr/bin/env bash
# Set up, start the local Slurm cluster, and run the whole test suite (slow tests included).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test
bash slurm/local-cluster/start.sh
exec .venv/bin/python -m pytest "$@"
