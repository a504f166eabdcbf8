#include "common/gpu_binding.h"

#include <fmt/format.h>

#include <atomic>
#include <cstdlib>

#ifdef DSI_WITH_CUDA
#include <cuda_runtime.h>
#endif

namespace dsi {
namespace {

std::atomic<int> g_local_rank{0};

int parse_rank(const char* v) {
  if (!v || !*v) return -1;
  char* end = nullptr;
  const long r = std::strtol(v, &end, 10);
  return (*end == '\0' && r >= 0 && r < (1 << 20)) ? static_cast<int>(r) : -1;
}

// cudaGetDeviceCount, and why it found none.
int device_count(std::string& why) {
#ifdef DSI_WITH_CUDA
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    why = fmt::format("cudaGetDeviceCount: {}", cudaGetErrorString(e));
    cudaGetLastError();  // clear it, so that a later CUDA call does not report it again
    return 0;
  }
  if (n == 0) why = "no CUDA device is visible (CUDA_VISIBLE_DEVICES?)";
  return n;
#else
  why = "this dsi was built without CUDA (nvcc or NCCL not found when configuring)";
  return 0;
#endif
}

}  // namespace

LocalRank local_rank_from_env(const std::function<const char*(const char*)>& get) {
  for (const char* var : {"OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID", "MPI_LOCALRANKID"}) {
    const int r = parse_rank(get(var));
    if (r >= 0) return {r, var};
  }
  return {};
}

void set_local_rank(int rank) {
  g_local_rank = rank;
}
int local_rank() {
  return g_local_rank;
}

int choose_gpu(int requested, int local_rank, int device_count) {
  if (device_count <= 0) throw GpuBindingError("no CUDA device is visible");
  if (requested >= device_count) {
    throw GpuBindingError(fmt::format("GPU {} was asked for but only {} {} visible", requested,
                                      device_count, device_count == 1 ? "is" : "are"));
  }
  if (requested >= 0) return requested;
  return std::max(0, local_rank) % device_count;
}

int cuda_device_count() {
  std::string why;
  return device_count(why);
}

int bound_cuda_device(int requested) {
  std::string why;
  const int n = device_count(why);
  if (n == 0) throw GpuBindingError(fmt::format("device 'cuda' asked for, but {}", why));
  return choose_gpu(requested, local_rank(), n);
}

}  // namespace dsi
