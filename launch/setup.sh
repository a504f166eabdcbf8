#!/usr/bin/env bash
# Installs what dsi needs on Debian 12 (when missing) and builds it into build/.
# Idempotent: a second run only rebuilds what changed.
set -euo pipefail
cd "$(dirname "$0")/.."

# clang + libclang-rt-14-dev build the sanitizer trees and the fuzzers, clang-format checks the
# style (launch/sanitize.sh, tests/fuzz/run.sh, launch/format.sh).
# python3-matplotlib draws `dsi sweep` plots; slurmctld slurmd slurm-client munge run the
# one-node Slurm cluster of tests/slurm (the daemons are started by the test, never by setup).
# patchelf sets the run paths of the GPU bundle (launch/gpu_bundle.sh, tests/bundle).
# libboost-dev: Boost.Asio and Boost.Beast (header-only) for `dsi serve`; curl drives it in
# tests/serve.
packages=(g++ cmake ninja-build pkg-config python3 openmpi-bin libopenmpi-dev libyaml-cpp-dev
          libcli11-dev nlohmann-json3-dev libfmt-dev libgtest-dev googletest
          python3-numpy python3-yaml python3-pip clang libclang-rt-14-dev clang-format
          python3-matplotlib slurmctld slurmd slurm-client munge patchelf libboost-dev curl)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The gguf package from PyPI (Debian has none) is the independent reference that the
# dequantizers are checked against (tests/unit/gguf_dequant_test.cc skips without it). It goes
# into Debian's python3, which the tests run, pinned and without pulling its other dependencies:
# gguf.quants and gguf.GGUFReader need only numpy and pyyaml, both Debian packages above.
if ! /usr/bin/python3 -c 'import gguf.quants' 2>/dev/null; then
  echo "setup: installing gguf==0.19.0 from PyPI for /usr/bin/python3"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo /usr/bin/python3 -m pip install --quiet --no-deps --break-system-packages gguf==0.19.0 ||
    echo "setup: warning: could not install gguf; the dequantizer reference tests will skip"
fi

# The official openai client (PyPI) drives `dsi serve` in tests/serve/serve_test.py, pinned,
# with its dependencies (httpx, pydantic, ...), into Debian's python3 like gguf above.
if ! /usr/bin/python3 -c 'import openai' 2>/dev/null; then
  echo "setup: installing openai==1.58.1 from PyPI for /usr/bin/python3"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo /usr/bin/python3 -m pip install --quiet --break-system-packages openai==1.58.1 ||
    echo "setup: warning: could not install openai; the serve test will fail"
fi

jobs=$(nproc)
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release ${DSI_CMAKE_ARGS:-} >/dev/null
cmake --build build -j "$jobs"
