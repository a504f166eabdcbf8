#!/usr/bin/env bash
# Sets up, builds, fetches the default model (SmolLM2-135M-Instruct) and runs the main job:
# DSI with 1 coordinator, 1 layer-skip drafter and 2 targets (4 MPI ranks).
set -euo pipefail
cd "$(dirname "$0")/.."
launch/setup.sh
launch/fetch_model.sh >/dev/null
exec launch/mpirun.sh -np 4 build/dsi run --config configs/default.yaml "$@"
