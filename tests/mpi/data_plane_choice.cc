// MPI test (np 3: coordinator + 2 workers): make_data_channel. Forced nccl where the workers
// cannot each have a GPU of their own (fewer than 2 GPUs: a CPU machine, or one GPU shared)
// fails on every rank alike with the reason, no hang; auto falls back to MPI host buffers
// and the channel moves data; mpi is MPI.
#include <fmt/format.h>
#include <mpi.h>

#include "common/gpu_binding.h"
#include "transport/data_plane.h"

int main(int argc, char** argv) {
  int provided;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
  int rank, size, failed = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  dsi::set_local_rank(rank);
  auto check = [&](bool ok, const std::string& what) {
    if (!ok) {
      fmt::print("FAIL rank {}: {}\n", rank, what);
      ++failed;
    }
  };
  const bool can_nccl = dsi::cuda_device_count() >= size - 1;
  {
    dsi::DataPlaneOptions o;
    o.mode = "nccl";
    o.gpu_ranks = true;
    std::string error;
    try {
      auto ch = dsi::make_data_channel(MPI_COMM_WORLD, o);
    } catch (const dsi::DataPlaneError& e) {
      error = e.what();
    }
    int errs = error.empty() ? 0 : 1;
    MPI_Allreduce(MPI_IN_PLACE, &errs, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    check(errs == 0 || errs == size, fmt::format("{} of {} ranks failed forced nccl", errs, size));
    if (!can_nccl) {
      check(error.starts_with("runtime.data_plane is nccl but "),
            "forced nccl error: '" + error + "'");
    }
  }
  for (const char* mode : {"auto", "mpi"}) {
    dsi::DataPlaneOptions o;
    o.mode = mode;
    o.gpu_ranks = true;
    auto ch = dsi::make_data_channel(MPI_COMM_WORLD, o);
    if (!can_nccl || o.mode == "mpi")
      check(!ch->moves_device_memory(), "MPI plane moves device memory");
    const dsi::DataKey key{1, dsi::DataKind::kTest, 0, 0};
    if (rank == 1) ch->send(2, key, {1, 2, 3});
    if (rank == 2) {
      std::vector<uint8_t> got;
      check(ch->recv(key, got, dsi::Clock::now() + std::chrono::seconds(10)) &&
                got == std::vector<uint8_t>{1, 2, 3},
            fmt::format("transfer over the {} plane", mode));
    }
    MPI_Barrier(MPI_COMM_WORLD);
  }
  MPI_Allreduce(MPI_IN_PLACE, &failed, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  if (rank == 0) fmt::print("data plane choice: {} failure(s)\n", failed);
  MPI_Finalize();
  return failed ? 1 : 0;
}
