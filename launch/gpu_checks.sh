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
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-gpu-results}
mkdir -p "$out"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"

cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DDSI_CUDA=ON >"$out/configure.log"
cmake --build build 2>&1 | tail -3

ctest --test-dir build -L gpu --output-on-failure 2>&1 | tee "$out/gpu_tests.log" | tail -5

export DSI_GPU_MODEL=${DSI_GPU_MODEL:-/tmp/dsi/llama-1b-f16.gguf}
mkdir -p "$(dirname "$DSI_GPU_MODEL")"
[ -f "$DSI_GPU_MODEL" ] || build/dsi make-model --shape llama-1b --type f16 -o "$DSI_GPU_MODEL"
build/tests/bench/llama_bench "$DSI_GPU_MODEL" --device cuda --dtype f16 --prompt 128 --gen 64 \
  --reps 3 --hbm-gbps "${DSI_HBM_GBPS:-4800}" 2>&1 | tee "$out/decode_bench.txt"

if [ -x build/tests/bench/data_plane_bench ]; then
  launch/mpirun.sh -np 2 build/tests/bench/data_plane_bench 2>&1 | tee "$out/data_plane_bench.txt"
fi

launch/mpirun.sh -np 6 build/dsi bench --config configs/gpu-1b.yaml --sp 1,2,4 --tokens 128 \
  --json-file "$out/dsi_bench.json" 2>&1 | tee "$out/dsi_bench.txt"
echo "results in $out"
