// Cooperative preemption: a flag raised by one thread (a worker's communication thread) and
// polled by another (an engine between layers, a data-channel wait).
#pragma once

#include <atomic>
#include <chrono>
#include <stdexcept>

namespace dsi {

using Clock = std::chrono::steady_clock;

// Set by the worker's communication thread when the running task is preempted; engines
// poll it between layers (CPU), between per-layer launches (GPU) or between sleep slices
// (synthetic).
class CancelFlag {
 public:
  bool cancelled() const { return flag_.load(std::memory_order_relaxed); }
  void cancel() { flag_.store(true, std::memory_order_relaxed); }
  void reset() { flag_.store(false, std::memory_order_relaxed); }

 private:
  std::atomic<bool> flag_{false};
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
