#include "launch/faults.h"

#include <fmt/format.h>
#include <unistd.h>

#include <csignal>
#include <cstring>
#include <stdexcept>

#include "engines/engine_factory.h"

namespace dsi {

FaultyControlChannel::FaultyControlChannel(ControlChannel& inner, Fault fault, double after_ms)
    : inner_(inner),
      fault_(fault),
      at_(Clock::now() + std::chrono::duration_cast<Clock::duration>(
                             std::chrono::duration<double, std::milli>(after_ms))) {}

void FaultyControlChannel::fire_if_due() const {
  if (Clock::now() < at_) return;
  if (fault_ == Fault::kExit) _exit(3);
  raise(SIGSTOP);
}

void FaultyControlChannel::send(int dst, std::vector<uint8_t> frame, Traffic traffic) {
  fire_if_due();
  inner_.send(dst, std::move(frame), traffic);
}

std::optional<Frame> FaultyControlChannel::recv(Clock::time_point deadline) {
  fire_if_due();
  auto f = inner_.recv(std::min(deadline, at_));
  fire_if_due();
  return f;
}

void KvCorruptingEngine::import_kv(const KvBlob& kv) {
  KvBlob junk = kv;
  for (size_t i = 0; i + sizeof(float) <= junk.bytes.size(); i += sizeof(float)) {
    const float v = (i / sizeof(float)) % 2 ? 1000.f : -1000.f;
    std::memcpy(junk.bytes.data() + i, &v, sizeof v);
  }
  inner_->import_kv(junk);
}

void check_fault(const std::string& fault) {
  if (fault != "exit" && fault != "hang" && fault != "kv_corrupt") {
    throw std::invalid_argument(
        fmt::format("unknown fault '{}' (expected exit, hang or kv_corrupt)", fault));
  }
}

std::unique_ptr<ControlChannel> apply_fault(const std::string& fault, double after_ms,
                                            ControlChannel& ch, WorkerOptions& opts) {
  check_fault(fault);
  if (fault == "kv_corrupt") {
    opts.engine_factory = [](const EngineSpec& spec) {
      return std::make_unique<KvCorruptingEngine>(make_engine(spec));
    };
    return nullptr;
  }
  return std::make_unique<FaultyControlChannel>(
      ch, fault == "exit" ? FaultyControlChannel::Fault::kExit : FaultyControlChannel::Fault::kHang,
      after_ms);
}

}  // namespace dsi
