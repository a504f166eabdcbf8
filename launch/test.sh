#!/usr/bin/env bash
# Sets up, builds and runs every test (unit, MPI, Slurm, fuzz; GPU tests skip without a
# device). The default model is fetched too, so its tests run; they skip if it cannot be.
set -euo pipefail
cd "$(dirname "$0")/.."
launch/setup.sh
if model=$(launch/fetch_model.sh); then
  export DSI_SMOLLM2_GGUF=$model
else
  echo "test: the default model could not be fetched; its tests will be skipped"
fi
cd build
ctest --output-on-failure --timeout 900 "$@"
