// Cooperative preemption: a flag raised by one thread (a worker's receiving thread) and
// polled by another (an engine between layers, a data-channel wait).
#pragma once

#include <atomic>
#include <chrono>
#include <stdexcept>

namespace dsi {

using Clock = std::chrono::steady_clock;

// Set by the worker's receiving thread when the running task is preempted; engines
// poll it between layers (CPU) or between per-layer launches (GPU), or sleep on it
// (synthetic: a raised flag wakes the sleeper at once).
class CancelFlag {
 public:
  bool cancelled() const { return flag_.load(std::memory_order_relaxed) != 0; }
  // Raises the flag and wakes a thread in sleep_until.
  void cancel();
  void reset() { flag_.store(0, std::memory_order_relaxed); }
  // Sleeps until the flag is raised or `deadline` passes; returns false if it was raised.
  bool sleep_until(Clock::time_point deadline) const;

 private:
  mutable std::atomic<uint32_t> flag_{0};  // a futex word
};

// Thrown by Engine::forward when it saw the cancel flag. The KV cache is then back at the
// length it had before the call (an engine never vouches for a half-computed position).
// Control flow, not a failure, so deliberately not a dsi::Error (common/error.h): the worker
// answers it with a Cancelled reply, and no handler for failures may swallow it. It stays a
// std::runtime_error so that one escaping by mistake is still reported with a text.
struct Cancelled : std::runtime_error {
  Cancelled() : std::runtime_error("forward cancelled") {}
};

}  // namespace dsi
