#include "transport/data_plane.h"
#include "transport/mpi_data_channel.h"

#include <fmt/format.h>

#include <cstdlib>
#include <cstring>
#include <map>

#include "common/gpu_binding.h"
#include "transport/mpi_check.h"
#include "transport/nccl_data_channel.h"

#ifdef DSI_WITH_CUDA
#include <cuda_runtime.h>
#endif

namespace dsi {
namespace {

// "rank 2", "ranks 2 and 3", "ranks 2, 3 and 5".
std::string rank_list(const std::vector<int>& ranks) {
  if (ranks.size() == 1) return fmt::format("rank {}", ranks[0]);
  std::string s = "ranks ";
  for (size_t i = 0; i < ranks.size(); ++i) {
    if (i > 0) s += i + 1 == ranks.size() ? " and " : ", ";
    s += std::to_string(ranks[i]);
  }
  return s;
}

// Why NCCL cannot serve these workers; empty when it can.
std::string nccl_obstacle(const std::vector<WorkerGpu>& workers) {
  std::vector<int> no_gpu;
  for (const auto& w : workers) {
    if (w.bus_id.empty()) no_gpu.push_back(w.rank);
  }
  if (!no_gpu.empty() && no_gpu.size() == workers.size()) return "no worker rank runs on a GPU";
  if (!no_gpu.empty()) {
    return fmt::format("{} {} no GPU; NCCL needs a GPU on every worker rank", rank_list(no_gpu),
                       no_gpu.size() == 1 ? "has" : "have");
  }
  std::map<std::pair<std::string, std::string>, std::vector<int>> by_gpu;
  for (const auto& w : workers) by_gpu[{w.host, w.bus_id}].push_back(w.rank);
  for (const auto& [gpu, ranks] : by_gpu) {
    if (ranks.size() > 1) {
      return fmt::format("{} share GPU {} on {}; NCCL needs one GPU per rank", rank_list(ranks),
                         gpu.second, gpu.first);
    }
  }
  return "";
}

}  // namespace

DataPlaneChoice choose_data_plane(const std::string& mode, const std::vector<WorkerGpu>& workers) {
  DataPlaneChoice c;
  if (mode == "mpi") {
    c.reason = "data plane: MPI host buffers (runtime.data_plane: mpi)";
    return c;
  }
  if (mode != "auto" && mode != "nccl") {
    c.error = true;
    c.reason = fmt::format("runtime.data_plane must be auto, mpi or nccl, not '{}'", mode);
    return c;
  }
  const std::string why = workers.empty() ? "there is no worker rank" : nccl_obstacle(workers);
  if (why.empty()) {
    c.nccl = true;
    c.reason = fmt::format("data plane: NCCL between {} GPU ranks", workers.size());
  } else if (mode == "nccl") {
    c.error = true;
    c.reason = fmt::format("runtime.data_plane is nccl but {}", why);
  } else {
    c.reason = fmt::format("data plane: MPI host buffers ({})", why);
  }
  return c;
}

namespace {

// This rank's GPU as a PCI bus id, or empty (no GPU asked for, none visible, a CPU build).
std::string my_bus_id(const DataPlaneOptions& o, int& device) {
  device = -1;
  if (!o.gpu_ranks) return "";
#ifdef DSI_WITH_CUDA
  try {
    device = bound_cuda_device(o.device);
  } catch (const GpuBindingError&) {
    return "";
  }
  char id[64] = {};
  if (cudaDeviceGetPCIBusId(id, sizeof id, device) != cudaSuccess) {
    cudaGetLastError();
    device = -1;
    return "";
  }
  return id;
#else
  return "";
#endif
}

}  // namespace

std::unique_ptr<DataChannel> make_data_channel(MPI_Comm comm, const DataPlaneOptions& options) {
  int rank = 0, size = 1;
  mpi_check(MPI_Comm_rank(comm, &rank), "MPI_Comm_rank");
  mpi_check(MPI_Comm_size(comm, &size), "MPI_Comm_size");
  // Rank 0's mode and gpu_ranks hold everywhere, so that every rank takes the same path
  // even if the environment differs between ranks.
  DataPlaneOptions o = options;
  char mode[32] = {};
  std::strncpy(mode, o.mode.c_str(), sizeof mode - 1);
  int gpu = o.gpu_ranks ? 1 : 0;
  mpi_check(MPI_Bcast(mode, sizeof mode, MPI_CHAR, 0, comm), "MPI_Bcast");
  mpi_check(MPI_Bcast(&gpu, 1, MPI_INT, 0, comm), "MPI_Bcast");
  o.mode = mode;
  o.gpu_ranks = gpu == 1;
  if (o.mode == "mpi") return make_mpi_data_channel(comm, o.poll_us);

  // Every rank reports (host, bus id); rank 0, the coordinator, holds no GPU.
  constexpr int kHost = MPI_MAX_PROCESSOR_NAME, kBus = 64;
  std::vector<char> mine(kHost + kBus, 0), all(static_cast<size_t>(size) * (kHost + kBus));
  int len = 0, device = -1;
  mpi_check(MPI_Get_processor_name(mine.data(), &len), "MPI_Get_processor_name");
  const std::string bus = rank == 0 ? "" : my_bus_id(o, device);
  std::strncpy(mine.data() + kHost, bus.c_str(), kBus - 1);
  mpi_check(
      MPI_Allgather(mine.data(), kHost + kBus, MPI_CHAR, all.data(), kHost + kBus, MPI_CHAR, comm),
      "MPI_Allgather");
  std::vector<WorkerGpu> workers;
  for (int r = 1; r < size; ++r) {
    const char* p = all.data() + static_cast<size_t>(r) * (kHost + kBus);
    workers.push_back(
        {r, std::string(p, strnlen(p, kHost)), std::string(p + kHost, strnlen(p + kHost, kBus))});
  }
  const DataPlaneChoice choice = choose_data_plane(o.mode, workers);
  if (choice.error) throw DataPlaneError(choice.reason);
  // Worth a line only for a GPU job (CPU jobs always use MPI host buffers).
  if (rank == 0 && o.gpu_ranks) fmt::print(stderr, "dsi: {}\n", choice.reason);
  if (!choice.nccl) return make_mpi_data_channel(comm, o.poll_us);
  NcclChannelOptions no;
  no.participate = rank != 0;
  no.device = device;
  no.poll_us = o.poll_us;
  try {
    return make_nccl_data_channel(comm, no);
  } catch (const NcclChannelError& e) {
    // Every rank gets the same error (the channel's construction agrees on it), so under
    // `auto` all of them fall back to MPI alike; `nccl` asked for NCCL and fails.
    if (o.mode != "auto") throw DataPlaneError(std::string(e.message()));
    if (rank == 0) {
      fmt::print(stderr, "dsi: NCCL could not be set up ({}); MPI host buffers instead\n",
                 e.message());
    }
    return make_mpi_data_channel(comm, o.poll_us);
  }
}

}  // namespace dsi
