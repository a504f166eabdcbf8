// Which GPU a rank computes on. Ranks are bound by their node-local rank: device =
// local_rank % visible devices, so that the ranks of a node spread over its GPUs and several
// ranks (a drafter and targets) may share one. The local rank comes from the launcher
// (Open MPI's OMPI_COMM_WORLD_LOCAL_RANK, Slurm's SLURM_LOCALID), else from MPI
// (MPI_Comm_split_type over shared memory), computed once per process by with_session.
#pragma once

#include <functional>
#include <string>

#include "common/error.h"

namespace dsi {

struct LocalRank {
  int rank = -1;       // -1: the environment does not say
  std::string source;  // the variable it came from
};

// Reads the launcher's variables through `get` (getenv in production, a map in tests).
// Open MPI's wins over Slurm's (an mpirun inside an allocation sets both; its own is right).
LocalRank local_rank_from_env(const std::function<const char*(const char*)>& get);

// The process's node-local rank: set once at start-up (with_session), 0 if never set.
void set_local_rank(int rank);
int local_rank();

// requested >= 0 names a device (it must be < device_count); -1 picks local_rank %
// device_count. Throws GpuBindingError naming the problem (no device, index out of range).
int choose_gpu(int requested, int local_rank, int device_count);

// Visible CUDA devices (0 when none, or in a build without CUDA).
int cuda_device_count();

// choose_gpu(requested, local_rank(), cuda_device_count()) with the reason in the error when
// there is no device (a build without CUDA, no driver, CUDA_VISIBLE_DEVICES empty).
int bound_cuda_device(int requested);

}  // namespace dsi
