#!/usr/bin/env bash
# Per-rank wrapper: binds this rank to one GPU by its local rank, then execs the command.
# Local rank: SLURM_LOCALID (srun) or OMPI_COMM_WORLD_LOCAL_RANK (mpirun). Rank 0, the
# coordinator, computes nothing and gets no GPU. On the node that hosts rank 0 the GPUs are
# shifted by one (local rank 1, the drafter, takes GPU 0), so a node with G GPUs carries G + 1
# ranks. DSI_GPUS_PER_NODE=0 (CPU mode, the default without GPUs) binds nothing;
# DSI_BIND_GPU=0 leaves CUDA_VISIBLE_DEVICES to Slurm (--gpu-bind).
set -euo pipefail
rank=${SLURM_PROCID:-${OMPI_COMM_WORLD_RANK:-0}}
local_rank=${SLURM_LOCALID:-${OMPI_COMM_WORLD_LOCAL_RANK:-0}}
gpus=${DSI_GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-0}}
where="rank $rank (local $local_rank) on $(hostname -s)"
if [ "$rank" -eq 0 ]; then
  msg="$where: coordinator, no GPU"
  [ "$gpus" -gt 0 ] && [ "${DSI_BIND_GPU:-1}" = 1 ] && export CUDA_VISIBLE_DEVICES=""
elif [ "$gpus" -gt 0 ]; then
  # Ranks are placed in blocks, so this node hosts rank 0 iff its first rank is 0.
  shift_by=0
  [ $((rank - local_rank)) -eq 0 ] && shift_by=1
  gpu=$(((local_rank - shift_by) % gpus))
  export DSI_LOCAL_GPU=$gpu
  msg="$where: GPU $gpu of $gpus"
  if [ "${DSI_BIND_GPU:-1}" = 1 ]; then
    export CUDA_VISIBLE_DEVICES=$gpu
  else
    msg="$msg (CUDA_VISIBLE_DEVICES left to Slurm: ${CUDA_VISIBLE_DEVICES:-unset})"
  fi
else
  msg="$where: CPU mode"
fi
[ "${DSI_QUIET_BIND:-0}" = 1 ] || echo "[bind] $msg" >&2
exec "$@"
