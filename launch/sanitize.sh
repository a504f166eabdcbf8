#!/usr/bin/env bash
# The sanitizer jobs of CI (ctest sanitize.address / sanitize.thread run them), each a clang
# tree of its own without CUDA (cmake/sanitize.cmake), built for the targets its tests need:
#
#   launch/sanitize.sh address [CTEST_ARGS...]   ASan+UBSan over the unit tests and the MPI
#                                                tests (build-asan; the fuzzers share it)
#   launch/sanitize.sh thread [CTEST_ARGS...]    TSan over the threaded tests: coordinator and
#                                                workers as threads, loopback channels, thread
#                                                pool, cancellation (build-tsan)
#
# Any report fails the job. Open MPI and the libraries below it are not built with sanitizers;
# tests/sanitizers/*.supp name their frames only (never dsi's). Override the trees with
# DSI_ASAN_BUILD_DIR / DSI_TSAN_BUILD_DIR and the compilers with CC/CXX; CTEST_ARGS narrow
# the run (e.g. -R RuntimeLoopback).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
mode=${1:-}
shift || true
supp=$root/tests/sanitizers
cc=${CC:-$(command -v clang || command -v clang-14)}
cxx=${CXX:-$(command -v clang++ || command -v clang++-14)}

case $mode in
  address)
    build=${DSI_ASAN_BUILD_DIR:-$root/build-asan}
    # Everything: the unit and MPI test programs, dsi (cli tests) and the fuzz targets.
    targets=(all)
    # Two passes: the tests that start no MPI, then the MPI ones with the slow unwinder, which
    # LSan needs to see Open MPI's frames below its unloaded plugins (tests/sanitizers/lsan.supp)
    # and which costs 3-4x on malloc-heavy code. Left out: layers (no C++) and idle_no_spin
    # (it measures CPU time, which under ASan is mostly the sanitizer's).
    # The first pass runs its tests side by side (one per core); the MPI tests oversubscribe
    # the cores on their own. The SmolLM2 runs under MPI (2+ minutes under ASan) are left to
    # the main tree: the tiny models take the same paths.
    passes=("-j $(nproc) -L ^(unit|plain)$ -E ^layers$"
            "-L ^mpi$ -LE ^plain$ -E ^mpi\.cli\.idle_no_spin$")
    unwind=(1 0)
    unset_env=("" DSI_SMOLLM2_GGUF)
    # Nor does it load the opt-in Qwen2.5-Coder pair (gigabytes of float32 weights).
    unset DSI_QWEN_CODER_1_5B_GGUF DSI_QWEN_CODER_0_5B_GGUF
    # DSI_FUZZ=ON as in tests/fuzz/run.sh, so that both configure the tree alike.
    extra=(-DDSI_FUZZ=ON)
    export ASAN_OPTIONS="check_initialization_order=1:detect_leaks=1:${ASAN_OPTIONS:-}"
    export LSAN_OPTIONS="suppressions=$supp/lsan.supp:print_suppressions=0:${LSAN_OPTIONS:-}"
    export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:${UBSAN_OPTIONS:-}"
    ;;
  thread)
    build=${DSI_TSAN_BUILD_DIR:-$root/build-tsan}
    targets=(dsi_threaded_tests)
    passes=("-L ^tsan$")
    unwind=(1)
    unset_env=("")
    extra=()
    export TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1:suppressions=$supp/tsan.supp:${TSAN_OPTIONS:-}"
    ;;
  *)
    echo "usage: launch/sanitize.sh address|thread [CTEST_ARGS...]" >&2
    exit 2
    ;;
esac
if [ -z "$cc" ] || [ -z "$cxx" ]; then
  echo "sanitize: clang not found (apt-get install clang libclang-rt-14-dev)" >&2
  exit 2
fi

echo "== sanitize $mode: building ${targets[*]} in $build"
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_C_COMPILER="$cc" -DCMAKE_CXX_COMPILER="$cxx" \
  -DCMAKE_BUILD_TYPE=Release -DDSI_CUDA=OFF -DDSI_SANITIZE="$mode" "${extra[@]}" >/dev/null
cmake --build "$build" --target "${targets[@]}" -j "$(nproc)"

# A pass that selects no test is an error, unless CTEST_ARGS narrowed the selection.
no_tests=error
[ $# -eq 0 ] || no_tests=ignore
status=0
asan_options=${ASAN_OPTIONS:-}
for i in "${!passes[@]}"; do
  read -r -a select <<<"${passes[$i]}"
  echo "== sanitize $mode: ctest ${select[*]} $*"
  ASAN_OPTIONS="fast_unwind_on_malloc=${unwind[$i]}:$asan_options" \
    env ${unset_env[$i]:+-u "${unset_env[$i]}"} ctest --test-dir "$build" --output-on-failure --no-tests=$no_tests "${select[@]}" "$@" || status=1
done
exit $status
