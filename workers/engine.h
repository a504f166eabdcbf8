// The engine interface every model implementation (synthetic, llama CPU, llama CUDA,
// layer-skip drafter) provides to the worker loops. An engine owns one KV cache for one
// sequence; it knows nothing about MPI, tasks or the scheduler.
#pragma once

#include <atomic>
#include <cstdint>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

namespace dsi {

using Token = int32_t;

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
struct Cancelled : std::runtime_error {
  Cancelled() : std::runtime_error("forward cancelled") {}
};

// Logits of the last n positions of a forward: row-major (n, vocab).
struct Logits {
  int n = 0;
  int vocab = 0;
  std::vector<float> data;
  std::span<const float> row(int i) const {
    return {data.data() + static_cast<size_t>(i) * vocab, static_cast<size_t>(vocab)};
  }
};

// KV of a token range [begin, end), opaque bytes in the engine's own layout.
struct KvBlob {
  int begin = 0;
  int end = 0;
  std::vector<uint8_t> bytes;
};

class Engine {
 public:
  virtual ~Engine() = default;

  // Runs `tokens` at positions [kv_len(), kv_len() + tokens.size()) and appends their KV.
  // Returns the logits of the last n_logits positions (0 <= n_logits <= tokens.size()).
  // Throws Cancelled if `cancel` was raised before it finished.
  virtual Logits forward(std::span<const Token> tokens, int n_logits, const CancelFlag& cancel) = 0;

  // Rolls the KV cache back to its first n positions (n <= kv_len()).
  virtual void truncate(int n) = 0;
  virtual int kv_len() const = 0;
  virtual int vocab_size() const = 0;

  // KV handoff between workers of the same model. Engines that cannot export throw.
  virtual KvBlob export_kv(int begin, int end) const {
    (void)begin;
    (void)end;
    throw std::runtime_error("this engine cannot export its KV cache");
  }
  virtual void import_kv(const KvBlob& kv) {
    (void)kv;
    throw std::runtime_error("this engine cannot import a KV cache");
  }
};

}  // namespace dsi
