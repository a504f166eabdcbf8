// DataChannel: the data plane, for payloads that are too big or too frequent for the control
// plane (the drafter's probability vectors for speculative sampling, KV handoff between targets).
// Keyed transfers: a receiver asks for a key and gets it whenever it arrived, in any order. The
// interface and an in-process loopback live here; MPI host buffers (transport/mpi_data_channel.h)
// and NCCL between GPU ranks (transport/nccl_data_channel.h) implement it.
#pragma once

#include <compare>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "common/cancel.h"

namespace dsi {

enum class DataKind : uint32_t {
  kDraftProbs = 1,  // the drafter's sampling probabilities q of one draft: float32[vocab]
  kTreeProbs = 4,   // q after one node of a chain's token tree (pos: node + 1): float32[vocab]
  kKvHeader = 2,    // KV handoff: KvHeader (does the blob follow?), always host memory
  kKvCache = 3,     // KV handoff: the engine's blob of a token range (host or device memory)
  kTest = 99,
};

struct DataKey {
  uint32_t run = 0;
  DataKind kind = DataKind::kTest;
  uint64_t stream = 0;  // e.g. the chain
  int64_t index = 0;    // e.g. the position
  auto operator<=>(const DataKey&) const = default;
};

class DataChannel {
 public:
  virtual ~DataChannel() = default;
  // Non-blocking: the bytes are owned by the channel until delivered.
  virtual void send(int dst, const DataKey& key, std::vector<uint8_t> bytes) = 0;
  // Waits for `key` (from any sender) and copies it out; it stays available (two
  // verifications may need the same vector) until discarded. Returns false at `deadline`, or
  // at once when `cancel` is raised.
  virtual bool recv(const DataKey& key, std::vector<uint8_t>& out, Clock::time_point deadline,
                    const CancelFlag* cancel = nullptr) = 0;
  // Drops every received transfer for which `stale` holds (receivers call it as streams end).
  virtual void discard(const std::function<bool(const DataKey&)>& stale) = 0;

  // Device memory (GPU ranks; pointers on the calling thread's current CUDA device). Only a
  // channel for which moves_device_memory() holds implements these; the others throw.
  // `stream` is the caller's cudaStream_t (nullptr: the legacy default stream). The channel
  // works on its own stream, ordered with the caller's by events, so neither call waits for
  // the GPU:
  //   send_device: sends the bytes at `src` as they are once the work queued on `stream` so
  //     far has run; work queued on `stream` after the call may overwrite `src`.
  //   recv_device: waits (host side, as recv) until `key` has arrived or is on its way, then
  //     makes the bytes land in `dst` before any work queued on `stream` after the call.
  //     `bytes` must equal the size sent.
  virtual bool moves_device_memory() const { return false; }
  virtual void send_device(int dst, const DataKey& key, const void* src, size_t bytes,
                           void* stream);
  virtual bool recv_device(const DataKey& key, void* dst, size_t bytes, void* stream,
                           Clock::time_point deadline, const CancelFlag* cancel = nullptr);
};

// One queue per rank in one process, for tests.
class LoopbackDataHub {
 public:
  explicit LoopbackDataHub(int size);
  std::unique_ptr<DataChannel> channel(int rank);

 private:
  friend class LoopbackDataChannel;
  struct Box {
    std::mutex mu;
    std::condition_variable cv;
    std::map<DataKey, std::vector<uint8_t>> items;
  };
  std::vector<std::unique_ptr<Box>> boxes_;
};

}  // namespace dsi
