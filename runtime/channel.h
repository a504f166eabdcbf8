// ControlChannel: the one interface at the process boundary of the control plane. MPI
// (runtime/mpi_channel.*) in production, an in-process loopback for tests, and a faulty
// wrapper that drops a rank. Sends never block on the peer; receives wait with a deadline
// and never spin a core.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <vector>

#include "runtime/protocol.h"

namespace dsi {

using Clock = std::chrono::steady_clock;

struct Envelope {
  int src = -1;
  Message msg;
};

class ControlChannel {
 public:
  virtual ~ControlChannel() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // Thread-safe; returns without waiting for the receiver.
  virtual void send(int dst, const Message& m) = 0;
  // Waits until a message arrives or `deadline` passes.
  virtual std::optional<Envelope> recv(Clock::time_point deadline) = 0;
};

// All ranks in one process, one queue per rank. Messages go through encode/decode so the
// wire format is exercised exactly as over MPI.
class LoopbackHub {
 public:
  explicit LoopbackHub(int size);
  std::unique_ptr<ControlChannel> channel(int rank);
  // A killed rank's messages are dropped both ways, as if its process had died.
  void kill(int rank);
  bool dead(int rank) const;

 private:
  friend class LoopbackChannel;
  struct Box {
    std::mutex mu;
    std::condition_variable cv;
    std::deque<std::pair<int, std::vector<uint8_t>>> q;
  };
  std::vector<std::unique_ptr<Box>> boxes_;
  std::vector<std::atomic<bool>> dead_;
};

}  // namespace dsi
