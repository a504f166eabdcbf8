#!/usr/bin/env bash
# Sets up, builds and runs every test (unit, MPI; GPU tests skip without a device).
set -euo pipefail
cd "$(dirname "$0")/.."
launch/setup.sh
cd build
ctest --output-on-failure --timeout 600 "$@"
