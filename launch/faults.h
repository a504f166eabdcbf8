// Fault injection for tests (`--fault-rank R --fault exit|hang|kv_corrupt --fault-after-ms T`):
// wrappers around a worker rank's control channel and engine, applied where the session is set
// up (launch/session.cc). The runtime itself (core/) has no fault code.
#pragma once

#include <memory>
#include <string>

#include "core/worker.h"
#include "engines/engine.h"
#include "transport/control_channel.h"

namespace dsi {

// A control channel that, once `after_ms` have passed since it was made, ends the process
// abruptly (exit: _exit(3), as a crash would) or stops it (hang: SIGSTOP, as a wedged node).
// Every send and recv checks the time; recv waits no longer than the fault time.
class FaultyControlChannel final : public ControlChannel {
 public:
  enum class Fault { kExit, kHang };
  FaultyControlChannel(ControlChannel& inner, Fault fault, double after_ms);

  int rank() const override { return inner_.rank(); }
  int size() const override { return inner_.size(); }
  void send(int dst, std::vector<uint8_t> frame, Traffic traffic) override;
  std::optional<Frame> recv(Clock::time_point deadline) override;

 private:
  void fire_if_due() const;
  ControlChannel& inner_;
  Fault fault_;
  Clock::time_point at_;
};

// An engine that corrupts the KV it imports (every float32 of the blob becomes +-1000), to show
// that the lossless checks notice a wrong handoff. KV it receives over the data plane is staged
// through host memory (the corruption needs the bytes); everything else is the inner engine's.
class KvCorruptingEngine final : public Engine {
 public:
  explicit KvCorruptingEngine(std::unique_ptr<Engine> inner) : inner_(std::move(inner)) {}

  Logits forward(std::span<const Token> tokens, int n_logits, const CancelFlag& cancel) override {
    return inner_->forward(tokens, n_logits, cancel);
  }
  void truncate(int n) override { inner_->truncate(n); }
  int kv_len() const override { return inner_->kv_len(); }
  int vocab_size() const override { return inner_->vocab_size(); }
  KvBlob export_kv(int begin, int end) const override { return inner_->export_kv(begin, end); }
  void import_kv(const KvBlob& kv) override;
  size_t kv_bytes_per_token() const override { return inner_->kv_bytes_per_token(); }
  std::string device_name() const override { return inner_->device_name(); }
  void send_kv(DataChannel& ch, int dst, const DataKey& key, int begin, int end) const override {
    inner_->send_kv(ch, dst, key, begin, end);
  }
  // recv_kv: Engine's host-staged default, which imports through import_kv above.

 private:
  std::unique_ptr<Engine> inner_;
};

// The faults `--fault` names: exit, hang, kv_corrupt. Throws std::invalid_argument naming an
// unknown one.
void check_fault(const std::string& fault);

// Applies `fault` to a worker rank: returns the channel it must use (a FaultyControlChannel
// over `ch`, or null for ch itself) and, for kv_corrupt, sets opts.engine_factory.
std::unique_ptr<ControlChannel> apply_fault(const std::string& fault, double after_ms,
                                            ControlChannel& ch, WorkerOptions& opts);

}  // namespace dsi
