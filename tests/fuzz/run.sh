#!/usr/bin/env bash
# Builds the GGUF fuzzer (clang + libFuzzer + ASan) in its own build directory and runs it for
# a bounded time. Exits non-zero when the fuzzer finds a crash, a leak, an uncaught exception
# other than ModelError, a timeout or an out-of-memory; the input is left in
# $BUILD/fuzz-artifacts/.
#
#   tests/fuzz/run.sh [SECONDS=60]
#
# Debian 12 packages, besides the project's usual build dependencies:
#   apt-get install -y clang-14 libclang-rt-14-dev python3
# (clang-14 gives clang/clang++ through the "clang" package; libclang-rt-14-dev holds
# libFuzzer and the ASan runtime.) Override the compilers with CC/CXX.
set -euo pipefail

seconds=${1:-60}
root=$(cd "$(dirname "$0")/../.." && pwd)
build=${DSI_FUZZ_BUILD_DIR:-$root/build-fuzz}
cc=${CC:-$(command -v clang || command -v clang-14)}
cxx=${CXX:-$(command -v clang++ || command -v clang++-14)}
testdata=${DSI_TESTDATA_DIR:-$root/../shared/testdata}

cmake -S "$root" -B "$build" -G Ninja \
  -DCMAKE_C_COMPILER="$cc" -DCMAKE_CXX_COMPILER="$cxx" \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo -DDSI_CUDA=OFF -DDSI_FUZZ=ON \
  -DCMAKE_CXX_FLAGS="-fsanitize=address,fuzzer-no-link -fno-omit-frame-pointer" \
  -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=address" >/dev/null
cmake --build "$build" --target gguf_fuzz -j2

seeds="$build/fuzz-seeds"
corpus="$build/fuzz-corpus"
artifacts="$build/fuzz-artifacts"
mkdir -p "$corpus" "$artifacts"
python3 "$root/tests/fuzz/make_seeds.py" "$testdata" "$seeds"

# Inputs are capped at 64 KiB (the tensor data of bigger files adds nothing to the parser), a
# single allocation at 256 MiB and the process at 2 GiB: the reader must reject absurd counts
# before allocating for them.
"$build/tests/fuzz/gguf_fuzz" -max_total_time="$seconds" -max_len=65536 -timeout=10 \
  -rss_limit_mb=2048 -malloc_limit_mb=256 -print_final_stats=1 \
  -artifact_prefix="$artifacts/" "$corpus" "$seeds"
