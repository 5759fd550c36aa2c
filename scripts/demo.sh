#!/usr/bin/env bash
# Set up, then run the main job on the bundled sample data with the local backend.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh demo
exec .venv/bin/python -m launcher submit jobs/demo.yaml "$@"
