#!/usr/bin/env bash
# Everything that needs a GPU, in one go, on a machine with dsi's build dependencies (see
# launch/setup.sh) and one or more NVIDIA GPUs. Writes logs and figures to OUT_DIR.
#   launch/gpu_checks.sh [OUT_DIR]
#   1. build with DSI_CUDA=ON (architectures 80;90)
#   2. GPU tests: kernel parity, CUDA engine against the CPU engine (ctest -L gpu)
#   3. decode tokens/s of a random 1.1B FP16 model against the HBM bound (llama_bench)
#   4. data-plane bandwidth: MPI host buffers, and NCCL when there are 2+ GPUs
#   5. DSI vs SI vs non-SI on configs/gpu-1b.yaml, every worker rank on the GPU(s),
#      with the lossless check of `dsi bench` (DSI/SI tokens equal non-SI's)
#   Each step runs under a time limit and logs to OUT_DIR/<step>.log; a failed step is reported
#   and the next one still runs (all but the first need the build). Exit 1 if any step failed.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-gpu-results}
mkdir -p "$out"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
failed=()

# step NAME SECONDS COMMAND...: runs COMMAND with a limit, its output in $out/NAME.log.
step() {
  local name=$1 limit=$2 rc=0
  shift 2
  echo "== $name"
  timeout "$limit" "$@" >"$out/$name.log" 2>&1 || rc=$?
  tail -n 8 "$out/$name.log"
  if [ "$rc" -ne 0 ]; then
    echo "== $name FAILED (exit $rc$([ "$rc" -eq 124 ] && echo ", timed out after ${limit}s")); log: $out/$name.log"
    failed+=("$name")
  fi
  return "$rc"
}

step gpu 60 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
if step build 1800 bash -c 'cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DDSI_CUDA=ON &&
                            cmake --build build'; then
  step gpu_tests 900 ctest --test-dir build -L gpu --output-on-failure

  export DSI_GPU_MODEL=${DSI_GPU_MODEL:-/tmp/dsi/llama-1b-f16.gguf}
  mkdir -p "$(dirname "$DSI_GPU_MODEL")"
  [ -f "$DSI_GPU_MODEL" ] ||
    step make_model 600 build/dsi make-model --shape llama-1b --type f16 -o "$DSI_GPU_MODEL"
  step decode_bench 600 build/tests/bench/llama_bench "$DSI_GPU_MODEL" --device cuda --dtype f16 \
    --prompt 128 --gen 64 --reps 3 --hbm-gbps "${DSI_HBM_GBPS:-4800}"

  if [ -x build/tests/bench/data_plane_bench ]; then
    step data_plane_bench 600 launch/mpirun.sh -np 2 build/tests/bench/data_plane_bench
  fi

  step dsi_bench 1200 launch/mpirun.sh -np 6 build/dsi bench --config configs/gpu-1b.yaml \
    --sp 1,2,4 --tokens 128 --json-file "$out/dsi_bench.json"
fi
echo "results in $out"
if [ ${#failed[@]} -gt 0 ]; then
  echo "failed steps: ${failed[*]}"
  exit 1
fi
