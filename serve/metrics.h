// What `dsi serve` exports at GET /metrics, in Prometheus' text format: requests by endpoint
// and status, tokens, time to first token and inter-token latency histograms, the queue, and
// what speculation did (acceptance, also per draft position; verifications launched and
// preempted; wasted target time; each rank's busy time). Thread-safe.
#pragma once

#include <array>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "core/report.h"

namespace dsi::serve {

class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds)
      : bounds_(std::move(bounds)), counts_(bounds_.size()) {}
  void observe(double v);
  // Lines for `name` (cumulative buckets, +Inf, sum and count).
  std::string render(const std::string& name, const std::string& help) const;

 private:
  std::vector<double> bounds_;
  std::vector<uint64_t> counts_;
  uint64_t count_ = 0;
  double sum_ = 0;
};

class Metrics {
 public:
  Metrics();
  void request(const std::string& endpoint, int status);
  void first_token(double seconds);
  void inter_token(double seconds);
  void set_queue(int waiting, bool running);
  // A finished (or stopped) generation's report.
  void generation(const RunReport& r);
  std::string render() const;

 private:
  mutable std::mutex mu_;
  std::map<std::pair<std::string, int>, uint64_t> requests_;
  Histogram ttft_, itl_;
  int waiting_ = 0;
  bool running_ = false;
  uint64_t generations_ = 0, stopped_ = 0, tokens_ = 0, prompt_tokens_ = 0;
  uint64_t accepted_ = 0, rejected_ = 0, launched_ = 0, preempted_ = 0;
  std::array<uint64_t, SchedulerStats::kPositions> accepted_at_{}, rejected_at_{};
  double wasted_s_ = 0, generate_s_ = 0;
  std::map<std::string, double> busy_s_;  // by rank role ("target 0", ...)
};

}  // namespace dsi::serve
