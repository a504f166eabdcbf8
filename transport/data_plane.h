// Choosing the data plane: NCCL between GPU ranks when every worker rank computes on its own
// GPU, MPI host buffers otherwise. The decision is a pure function of what each worker rank
// reports (host name, PCI bus id of its GPU), so it is unit-tested without MPI or GPUs;
// make_data_channel gathers those reports over MPI and builds the chosen channel.
#pragma once

#include <mpi.h>

#include <memory>
#include <string>
#include <vector>

#include "common/error.h"
#include "transport/data_channel.h"

namespace dsi {

struct DataPlaneOptions {
  std::string mode = "auto";  // auto | mpi | nccl (runtime.data_plane)
  bool gpu_ranks = false;     // every worker rank computes on a GPU (model.device, drafter_device)
  int device = -1;            // requested CUDA device; -1: bound by node-local rank
  int poll_us = 20;           // MPI probe interval
};

// What one worker rank reports about itself.
struct WorkerGpu {
  int rank = 0;        // world rank
  std::string host;    // MPI processor name
  std::string bus_id;  // PCI bus id of its GPU ("0000:1b:00.0"); empty: no GPU
};

struct DataPlaneChoice {
  bool nccl = false;
  bool error = false;  // the mode asked for cannot be had (or is unknown); `reason` says why
  std::string reason;  // one line for people: "data plane: ..." or the error
};

// The rule: NCCL when mode is auto or nccl and every worker rank has a GPU that no other
// worker rank on its host shares (NCCL refuses two ranks on one GPU); else MPI host buffers.
// mode nccl when that does not hold: error naming the ranks.
DataPlaneChoice choose_data_plane(const std::string& mode, const std::vector<WorkerGpu>& workers);

// Collective over `comm` (rank 0: the coordinator, no GPU; every other rank a worker). In a
// GPU job (gpu_ranks) rank 0 prints the choice once, to stderr. Throws DataPlaneError on every
// rank when the choice is an error or the NCCL communicators cannot be built.
std::unique_ptr<DataChannel> make_data_channel(MPI_Comm comm, const DataPlaneOptions& options);

}  // namespace dsi
