// GPU MPI test (np 2, two distinct GPUs): the NCCL data channel passes the DataChannel
// conformance checks through its device path (each payload goes host -> device, send_device,
// recv_device, device -> host), and through its host path; ranks send to each other at the
// same time (the cross-send deadlock a shared communicator would have); a send to self; the
// caller overwrites src right after send_device; recv_device honours deadline and cancel while
// pending and refuses a wrong size. Exits 77 (ctest: Skipped) without two GPUs: NCCL refuses
// two ranks on one GPU, so a one-GPU machine cannot run it.
#include <cuda_runtime.h>
#include <fmt/format.h>
#include <mpi.h>

#include <cstdlib>
#include <cstring>

#include "../data_channel_conformance.h"
#include "common/gpu_binding.h"
#include "kernels/cuda_check.h"
#include "transport/nccl_data_channel.h"

namespace dsi {
namespace {

constexpr uint32_t kSizeMark = 0x40000000;  // run bit of the host message carrying the size

DataKey size_key(DataKey k) {
  k.run |= kSizeMark;
  return k;
}

// The DataChannel interface over the device path: the conformance checks know host vectors,
// so each one goes through device memory on both sides. The size travels first over the
// host path (recv_device needs it).
class DeviceView final : public DataChannel {
 public:
  DeviceView(DataChannel& ch, cudaStream_t s) : ch_(ch), s_(s) {}

  void send(int dst, const DataKey& key, std::vector<uint8_t> bytes) override {
    const uint64_t n = bytes.size();
    void* d = nullptr;
    if (n > 0) {
      CUDA_CHECK(cudaMallocAsync(&d, n, s_));
      CUDA_CHECK(cudaMemcpyAsync(d, bytes.data(), n, cudaMemcpyHostToDevice, s_));
    }
    std::vector<uint8_t> size(sizeof n);
    std::memcpy(size.data(), &n, sizeof n);
    ch_.send(dst, size_key(key), std::move(size));
    ch_.send_device(dst, key, d, n, s_);
    if (n > 0) {
      // The contract: work queued after send_device may overwrite src.
      CUDA_CHECK(cudaMemsetAsync(d, 0xEE, n, s_));
      CUDA_CHECK(cudaFreeAsync(d, s_));
    }
  }

  bool recv(const DataKey& key, std::vector<uint8_t>& out, Clock::time_point deadline,
            const CancelFlag* cancel) override {
    std::vector<uint8_t> size;
    if (!ch_.recv(size_key(key), size, deadline, cancel)) return false;
    uint64_t n = 0;
    std::memcpy(&n, size.data(), sizeof n);
    void* d = nullptr;
    if (n > 0) CUDA_CHECK(cudaMallocAsync(&d, n, s_));
    if (!ch_.recv_device(key, d, n, s_, deadline, cancel)) {
      if (d) CUDA_CHECK(cudaFreeAsync(d, s_));
      return false;
    }
    out.assign(n, 0);
    if (n > 0) {
      CUDA_CHECK(cudaMemcpyAsync(out.data(), d, n, cudaMemcpyDeviceToHost, s_));
      CUDA_CHECK(cudaFreeAsync(d, s_));
    }
    CUDA_CHECK(cudaStreamSynchronize(s_));
    return true;
  }

  void discard(const std::function<bool(const DataKey&)>& stale) override {
    ch_.discard([&](const DataKey& k) {
      DataKey plain = k;
      plain.run &= ~kSizeMark;
      return stale(plain);
    });
  }

 private:
  DataChannel& ch_;
  cudaStream_t s_;
};

std::vector<uint8_t> to_host(const void* d, size_t n) {
  std::vector<uint8_t> h(n);
  CUDA_CHECK(cudaMemcpy(h.data(), d, n, cudaMemcpyDeviceToHost));
  return h;
}

// Both ranks send 4 x 64 MiB to each other and 1 MiB to themselves before receiving.
std::vector<std::string> cross_and_self(DataChannel& ch, int rank, cudaStream_t s) {
  std::vector<std::string> fails;
  const int peer = 1 - rank;
  const size_t n = 64 << 20, n_self = 1 << 20;
  void *src = nullptr, *dst = nullptr;
  CUDA_CHECK(cudaMalloc(&src, n));
  CUDA_CHECK(cudaMalloc(&dst, n));
  std::vector<std::vector<uint8_t>> sent;
  for (int i = 0; i < 4; ++i) {
    sent.push_back(conformance::pattern(n, 100 + 10 * rank + i));
    CUDA_CHECK(cudaMemcpyAsync(src, sent.back().data(), n, cudaMemcpyHostToDevice, s));
    ch.send_device(peer, DataKey{2, DataKind::kTest, static_cast<uint64_t>(rank), i}, src, n, s);
  }
  const auto self = conformance::pattern(n_self, 7 + rank);
  CUDA_CHECK(cudaMemcpyAsync(src, self.data(), n_self, cudaMemcpyHostToDevice, s));
  ch.send_device(rank, DataKey{3, DataKind::kTest, 0, 0}, src, n_self, s);
  CUDA_CHECK(cudaMemsetAsync(src, 0, n, s));  // may overwrite src now
  const auto deadline = Clock::now() + std::chrono::seconds(60);
  for (int i = 3; i >= 0; --i) {
    if (!ch.recv_device(DataKey{2, DataKind::kTest, static_cast<uint64_t>(peer), i}, dst, n, s,
                        deadline)) {
      fails.push_back(fmt::format("cross transfer {} from rank {} missing", i, peer));
      continue;
    }
    CUDA_CHECK(cudaStreamSynchronize(s));
    if (to_host(dst, n) != conformance::pattern(n, 100 + 10 * peer + i)) {
      fails.push_back(fmt::format("cross transfer {} from rank {} damaged", i, peer));
    }
  }
  if (!ch.recv_device(DataKey{3, DataKind::kTest, 0, 0}, dst, n_self, s, deadline)) {
    fails.push_back("send to self missing");
  } else {
    CUDA_CHECK(cudaStreamSynchronize(s));
    if (to_host(dst, n_self) != self) fails.push_back("send to self damaged");
  }
  ch.discard([](const DataKey& k) { return k.run == 2 || k.run == 3; });
  CUDA_CHECK(cudaFree(src));
  CUDA_CHECK(cudaFree(dst));
  return fails;
}

// recv_device of a key never sent: the deadline, a cancel raised meanwhile; a wrong size.
std::vector<std::string> pending_and_size(DataChannel& ch, int rank, cudaStream_t s) {
  std::vector<std::string> fails;
  void* d = nullptr;
  CUDA_CHECK(cudaMalloc(&d, 128));
  const DataKey never{9, DataKind::kTest, 9, 9};
  auto t0 = Clock::now();
  if (ch.recv_device(never, d, 128, s, t0 + std::chrono::milliseconds(50))) {
    fails.push_back("recv_device of a key never sent succeeded");
  }
  if (Clock::now() - t0 > std::chrono::milliseconds(500))
    fails.push_back("recv_device deadline overrun");
  CancelFlag cancel;
  std::thread raiser([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    cancel.cancel();
  });
  t0 = Clock::now();
  const bool r = ch.recv_device(never, d, 128, s, t0 + std::chrono::seconds(20), &cancel);
  raiser.join();
  if (r) fails.push_back("cancelled recv_device succeeded");
  if (Clock::now() - t0 > std::chrono::seconds(2))
    fails.push_back("recv_device cancel not seen promptly");

  const DataKey sized{4, DataKind::kTest, 0, 0};
  if (rank == 0) ch.send_device(1, sized, d, 100, s);
  if (rank == 1) {
    try {
      ch.recv_device(sized, d, 99, s, Clock::now() + std::chrono::seconds(30));
      fails.push_back("recv_device of the wrong size accepted");
    } catch (const std::invalid_argument&) {
    }
    if (!ch.recv_device(sized, d, 100, s, Clock::now() + std::chrono::seconds(30))) {
      fails.push_back("recv_device of the right size failed after a wrong one");
    }
  }
  CUDA_CHECK(cudaStreamSynchronize(s));
  ch.discard([](const DataKey& k) { return k.run == 4; });
  CUDA_CHECK(cudaFree(d));
  return fails;
}

int run(int rank) {
  std::vector<std::string> fails;
  const int device = choose_gpu(-1, local_rank(), cuda_device_count());
  CUDA_CHECK(cudaSetDevice(device));
  NcclChannelOptions o;
  o.device = device;
  auto ch = make_nccl_data_channel(MPI_COMM_WORLD, o);
  if (!ch->moves_device_memory()) fails.push_back("moves_device_memory() is false");
  cudaStream_t s;
  CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  {
    DeviceView view(*ch, s);
    if (rank == 0) conformance::send_all(view, 1);
    if (rank == 1) {
      for (auto& f : conformance::receive_all(view)) fails.push_back("device path: " + f);
    }
  }
  MPI_Barrier(MPI_COMM_WORLD);
  if (rank == 0) conformance::send_all(*ch, 1);
  if (rank == 1) {
    for (auto& f : conformance::receive_all(*ch)) fails.push_back("host path: " + f);
  }
  MPI_Barrier(MPI_COMM_WORLD);
  for (auto& f : cross_and_self(*ch, rank, s)) fails.push_back(f);
  MPI_Barrier(MPI_COMM_WORLD);
  for (auto& f : pending_and_size(*ch, rank, s)) fails.push_back(f);
  MPI_Barrier(MPI_COMM_WORLD);
  CUDA_CHECK(cudaStreamDestroy(s));
  ch.reset();
  for (const auto& f : fails) fmt::print("FAIL rank {}: {}\n", rank, f);
  return static_cast<int>(fails.size());
}

}  // namespace
}  // namespace dsi

int main(int argc, char** argv) {
  int provided;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
  int rank, size;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  MPI_Comm node;
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node);
  int local = 0, node_size = 1;
  MPI_Comm_rank(node, &local);
  MPI_Comm_size(node, &node_size);
  MPI_Comm_free(&node);
  dsi::set_local_rank(local);
  // Skipped unless each rank of this node gets a GPU of its own.
  int devices = dsi::cuda_device_count(), enough = size == 2 && devices >= node_size ? 1 : 0;
  MPI_Allreduce(MPI_IN_PLACE, &enough, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  if (!enough) {
    if (rank == 0) {
      fmt::print(
          "SKIP: the NCCL data channel test needs 2 ranks on 2 distinct GPUs; {} GPU(s) "
          "visible to {} rank(s) here. NCCL refuses two ranks on one GPU, so a one-GPU machine "
          "cannot run it\n",
          devices, size);
    }
    MPI_Finalize();
    return 77;
  }
  int failed = 0;
  try {
    failed = dsi::run(rank);
  } catch (const std::exception& e) {
    fmt::print("FAIL rank {}: {}\n", rank, e.what());
    failed = 1;
  }
  MPI_Allreduce(MPI_IN_PLACE, &failed, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  if (rank == 0) {
    fmt::print("NCCL data channel: {} failure(s)\n", failed);
  }
  MPI_Finalize();
  return failed ? 1 : 0;
}
