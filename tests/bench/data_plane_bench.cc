// Benchmark (not a test): one-way bandwidth of the data plane between rank 0 (sender) and
// rank 1 (receiver), 1 KiB .. 256 MiB, for
//   mpi         the MPI host-buffer channel, host vectors (what CPU ranks move);
//   mpi-device  device buffers through the MPI channel: cudaMemcpy D2H, send, recv, H2D
//               (what GPU ranks pay when the data plane falls back to MPI); needs a GPU;
//   nccl        the NCCL channel's send_device / recv_device; needs 2 distinct GPUs.
// Per size the sender sends `iters` transfers back to back; the receiver takes them all (and
// waits for its stream), then acknowledges; time = first send to the acknowledgement.
// Run: mpirun -np 2 build/tests/bench/data_plane_bench [mpi|mpi-device|nccl|all] [max_mib]
#include <fmt/format.h>
#include <mpi.h>

#include <algorithm>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include "common/gpu_binding.h"
#include "transport/mpi_data_channel.h"
#include "transport/nccl_data_channel.h"

#ifdef DSI_WITH_CUDA
#include <cuda_runtime.h>

#include "kernels/cuda_check.h"
#endif

namespace dsi {
namespace {

struct Plane {
  std::function<void(const DataKey&, size_t)> send;  // rank 0
  std::function<bool(const DataKey&, size_t)> recv;  // rank 1
  std::function<void()> drain = [] {};               // rank 1: the received bytes are in place
  DataChannel* ch = nullptr;
};

void measure(const std::string& name, Plane& p, int rank, size_t max_bytes, uint32_t run) {
  if (rank == 0) {
    fmt::print("\n{}\n{:>10} {:>6} {:>12} {:>10}\n", name, "bytes", "iters", "us/transfer", "GB/s");
  }
  for (size_t n = 1024; n <= max_bytes; n *= 4, ++run) {
    const int iters = static_cast<int>(std::clamp<size_t>((size_t{512} << 20) / n, 3, 1000));
    auto key = [&](int i) { return DataKey{run, DataKind::kTest, 0, i}; };
    // One warm-up transfer (index -1), then the timed ones.
    double t = 0;
    MPI_Barrier(MPI_COMM_WORLD);
    for (int pass = 0; pass < 2; ++pass) {
      const int from = pass == 0 ? -1 : 0, to = pass == 0 ? 0 : iters;
      MPI_Barrier(MPI_COMM_WORLD);
      const double t0 = MPI_Wtime();
      if (rank == 0) {
        for (int i = from; i < to; ++i) p.send(key(i), n);
        MPI_Recv(nullptr, 0, MPI_BYTE, 1, 77, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
      } else if (rank == 1) {
        for (int i = from; i < to; ++i) {
          if (!p.recv(key(i), n)) {
            fmt::print(stderr, "transfer {} of {} bytes did not arrive\n", i, n);
            MPI_Abort(MPI_COMM_WORLD, 1);
          }
        }
        p.drain();
        p.ch->discard([&](const DataKey& k) { return k.run == run; });
        MPI_Send(nullptr, 0, MPI_BYTE, 0, 77, MPI_COMM_WORLD);
      }
      t = MPI_Wtime() - t0;
    }
    if (rank == 0) {
      fmt::print("{:>10} {:>6} {:>12.1f} {:>10.2f}\n", n, iters, t / iters * 1e6,
                 static_cast<double>(n) * iters / t / 1e9);
    }
  }
}

Clock::time_point soon() {
  return Clock::now() + std::chrono::seconds(60);
}

void bench_mpi(int rank, size_t max_bytes) {
  auto ch = make_mpi_data_channel(MPI_COMM_WORLD, 20);
  std::vector<uint8_t> src(max_bytes, 1), out;
  Plane p;
  p.ch = ch.get();
  p.send = [&](const DataKey& k, size_t n) {
    ch->send(1, k, std::vector<uint8_t>(src.begin(), src.begin() + n));
  };
  p.recv = [&](const DataKey& k, size_t) { return ch->recv(k, out, soon()); };
  measure("mpi: MPI host buffers, host memory", p, rank, max_bytes, 1000);
  MPI_Barrier(MPI_COMM_WORLD);
}

#ifdef DSI_WITH_CUDA
void bench_mpi_device(int rank, size_t max_bytes) {
  auto ch = make_mpi_data_channel(MPI_COMM_WORLD, 20);
  void* d = nullptr;
  CUDA_CHECK(cudaMalloc(&d, max_bytes));
  cudaStream_t s;
  CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  std::vector<uint8_t> out;
  Plane p;
  p.ch = ch.get();
  p.send = [&](const DataKey& k, size_t n) {
    std::vector<uint8_t> h(n);
    CUDA_CHECK(cudaMemcpy(h.data(), d, n, cudaMemcpyDeviceToHost));
    ch->send(1, k, std::move(h));
  };
  p.recv = [&](const DataKey& k, size_t n) {
    if (!ch->recv(k, out, soon())) return false;
    CUDA_CHECK(cudaMemcpyAsync(d, out.data(), n, cudaMemcpyHostToDevice, s));
    return true;
  };
  p.drain = [&] { CUDA_CHECK(cudaStreamSynchronize(s)); };
  measure("mpi-device: device memory staged through MPI host buffers", p, rank, max_bytes, 2000);
  MPI_Barrier(MPI_COMM_WORLD);
  CUDA_CHECK(cudaStreamDestroy(s));
  CUDA_CHECK(cudaFree(d));
}

void bench_nccl(int rank, size_t max_bytes, int device) {
  NcclChannelOptions o;
  o.device = device;
  auto ch = make_nccl_data_channel(MPI_COMM_WORLD, o);
  void* d = nullptr;
  CUDA_CHECK(cudaMalloc(&d, max_bytes));
  cudaStream_t s;
  CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  Plane p;
  p.ch = ch.get();
  p.send = [&](const DataKey& k, size_t n) { ch->send_device(1, k, d, n, s); };
  p.recv = [&](const DataKey& k, size_t n) { return ch->recv_device(k, d, n, s, soon()); };
  p.drain = [&] { CUDA_CHECK(cudaStreamSynchronize(s)); };
  measure("nccl: NCCL data channel, device memory", p, rank, max_bytes, 3000);
  CUDA_CHECK(cudaStreamSynchronize(s));
  MPI_Barrier(MPI_COMM_WORLD);
  CUDA_CHECK(cudaStreamDestroy(s));
  CUDA_CHECK(cudaFree(d));
}
#endif

}  // namespace
}  // namespace dsi

int main(int argc, char** argv) {
  int provided;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
  int rank, size;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  const std::string which = argc > 1 ? argv[1] : "all";
  const size_t max_bytes = (argc > 2 ? std::strtoull(argv[2], nullptr, 10) : 256) << 20;
  if (size != 2) {
    if (rank == 0) fmt::print(stderr, "run with mpirun -np 2\n");
    MPI_Finalize();
    return 2;
  }
  MPI_Comm node;
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node);
  int local = 0, node_size = 1;
  MPI_Comm_rank(node, &local);
  MPI_Comm_size(node, &node_size);
  MPI_Comm_free(&node);
  dsi::set_local_rank(local);
  if (which == "mpi" || which == "all") dsi::bench_mpi(rank, max_bytes);
#ifdef DSI_WITH_CUDA
  const int devices = dsi::cuda_device_count();
  const int device = devices > 0 ? dsi::choose_gpu(-1, local, devices) : -1;
  if (device >= 0) cudaSetDevice(device);
  if (which == "mpi-device" || which == "all") {
    if (devices > 0) {
      dsi::bench_mpi_device(rank, max_bytes);
    } else if (rank == 0) {
      fmt::print("\nmpi-device: skipped (no GPU visible)\n");
    }
  }
  if (which == "nccl" || which == "all") {
    if (devices >= node_size) {
      dsi::bench_nccl(rank, max_bytes, device);
    } else if (rank == 0) {
      fmt::print(
          "\nnccl: skipped ({} GPU(s) for {} ranks on this node; NCCL needs one GPU per rank)\n",
          devices, node_size);
    }
  }
#else
  if (rank == 0 && which != "mpi") fmt::print("\n{}: skipped (built without CUDA)\n", which);
#endif
  MPI_Finalize();
  return 0;
}
