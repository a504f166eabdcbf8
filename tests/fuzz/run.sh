#!/usr/bin/env bash
# Builds the fuzzers in the ASan+UBSan tree (clang, DSI_SANITIZE=address: the tree the CI's
# sanitizer job uses too, see launch/sanitize.sh) and runs each for a bounded time. Exits
# non-zero when a fuzzer finds a crash, a leak, undefined behaviour, an uncaught exception
# other than ModelError, a timeout or an out-of-memory; the input is left in
# $BUILD/fuzz-artifacts/.
#
#   tests/fuzz/run.sh [SECONDS=60] [TARGET...]     TARGET: gguf (default), tokenizer,
#                                                  safetensors, serve_request, or all
#
# Debian 12 packages, besides the project's usual build dependencies:
#   apt-get install -y clang libclang-rt-14-dev python3
# ("clang" brings clang-14; libclang-rt-14-dev holds libFuzzer and the sanitizer runtimes.)
# Override the compilers with CC/CXX, the build folder (default build-asan) with
# DSI_FUZZ_BUILD_DIR and the test data with DSI_TESTDATA_DIR. The outside test data (reference
# vocab files and models) only adds seeds and vocabularies: without it the fuzzers run on
# inputs built here.
set -euo pipefail

seconds=${1:-60}
shift || true
targets=("$@")
[[ ${#targets[@]} -eq 0 ]] && targets=(gguf)
[[ ${targets[0]} == all ]] && targets=(gguf tokenizer safetensors serve_request)

root=$(cd "$(dirname "$0")/../.." && pwd)
build=${DSI_FUZZ_BUILD_DIR:-$root/build-asan}
cc=${CC:-$(command -v clang || command -v clang-14)}
cxx=${CXX:-$(command -v clang++ || command -v clang++-14)}
testdata=${DSI_TESTDATA_DIR:-$root/../shared/testdata}

cmake -S "$root" -B "$build" -G Ninja \
  -DCMAKE_C_COMPILER="$cc" -DCMAKE_CXX_COMPILER="$cxx" \
  -DCMAKE_BUILD_TYPE=Release -DDSI_CUDA=OFF -DDSI_SANITIZE=address -DDSI_FUZZ=ON >/dev/null
if ! cmake --build "$build" --target "${targets[@]/%/_fuzz}" -j2; then
  echo "fuzz: building ${targets[*]} failed; free disk where the tree is:"
  df -h "$build" || true
  exit 1
fi

artifacts="$build/fuzz-artifacts"
mkdir -p "$artifacts"
for t in "${targets[@]}"; do
  seeds="$build/fuzz-seeds-$t"
  corpus="$build/fuzz-corpus-$t"
  mkdir -p "$seeds" "$corpus"
  case $t in
    gguf) python3 "$root/tests/fuzz/make_seeds.py" "$testdata" "$seeds" ;;
    tokenizer)
      printf 'Hello, world! 1314151 \xe5\xa4\xa9\xef\xbd\x9e \xf0\x9f\xa6\x99\n\t  x' >"$seeds/text.txt"
      inp=$testdata/ggml-vocab-gpt-2.gguf.inp
      if [[ -f $inp ]]; then
        # One seed per test string of the vocabulary's test cases (short inputs run fast).
        python3 -c '
import sys
for i, t in enumerate(open(sys.argv[1], "rb").read().split(b"\n__ggml_vocab_test__\n")):
    open("%s/inp-%03d" % (sys.argv[2], i), "wb").write(t)' "$inp" "$seeds"
      else
        echo "test data missing: $inp (seeds not used)"
      fi ;;
    safetensors) printf '\x40\x00\x00\x00\x00\x00\x00\x00{"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}          \x00\x00\x80\x3f\x00\x00\x00\x40' \
                   > "$seeds/small.safetensors" ;;
    serve_request)
      printf '{"prompt": "ab", "max_tokens": 5, "stop": ["b", "x"], "stream": true}' >"$seeds/c.json"
      printf '{"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}], "n": 1}' \
        >"$seeds/chat.json" ;;
  esac
  echo "== fuzzing $t for ${seconds}s"
  # Inputs are capped at 64 KiB, one allocation at 256 MiB and the process at 2 GiB: the readers
  # must reject absurd counts before allocating for them.
  log="$build/fuzz-$t.log"
  rc=0
  "$build/tests/fuzz/${t}_fuzz" -max_total_time="$seconds" -max_len=65536 -timeout=10 \
    -rss_limit_mb=2048 -malloc_limit_mb=256 -print_final_stats=1 \
    -artifact_prefix="$artifacts/$t-" "$corpus" "$seeds" 2>&1 | tee "$log" || rc=$?
  if [[ $rc -ne 0 ]]; then
    # libFuzzer ends with its statistics: say last what it found.
    echo "fuzz: $t failed (exit $rc):"
    grep -m 5 -E 'ERROR|SUMMARY|deadly signal|Timeout|out-of-memory|leak|uncaught' "$log" || true
    ls "$artifacts" | grep "^$t-" | tail -3 || true
    exit "$rc"
  fi
done
