// ControlChannel: the one interface at the process boundary of the control plane. It moves
// frames (the encoded messages of core/protocol.h) and knows nothing of what they say. MPI
// (transport/mpi_channel.*) in production, an in-process loopback for tests. Sends never block
// on the peer; receives wait with a deadline and never spin a core.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <vector>

#include "common/cancel.h"

namespace dsi {

// What a frame says about the traffic to come: liveness frames (heartbeats) do not make a
// channel "hot" (its receive polls faster while work frames flow). A deferred work frame does
// not wake a receiver that sleeps: it is read after the next frame that does, or at the
// receiver's next poll (a few hundred microseconds, 2 ms when cold), in its order. Senders
// defer what the receiver would not act on at once, and save the wake-up (its system call
// costs the sender several microseconds on a VM, and the receiver a CPU).
enum class Traffic { kWork, kDeferred, kLiveness };

struct Frame {
  int src = -1;
  std::vector<uint8_t> bytes;
};

class ControlChannel {
 public:
  virtual ~ControlChannel() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // Thread-safe; returns without waiting for the receiver.
  virtual void send(int dst, std::vector<uint8_t> frame, Traffic traffic = Traffic::kWork) = 0;
  // Waits until a frame arrives or `deadline` passes.
  virtual std::optional<Frame> recv(Clock::time_point deadline) = 0;
};

// All ranks in one process, one queue per rank: the same frames as over MPI.
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
