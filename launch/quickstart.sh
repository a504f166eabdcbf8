#!/usr/bin/env bash
# Sets up, builds and runs the main job on the default config: DSI with 1 coordinator,
# 1 drafter and 4 targets (6 MPI ranks).
set -euo pipefail
cd "$(dirname "$0")/.."
launch/setup.sh
exec launch/mpirun.sh -np 6 build/dsi run --config configs/default.yaml "$@"
