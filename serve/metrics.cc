#include "serve/metrics.h"

#include <fmt/format.h>

#include <algorithm>

namespace dsi::serve {

void Histogram::observe(double v) {
  for (size_t i = 0; i < bounds_.size(); ++i) {
    if (v <= bounds_[i]) ++counts_[i];
  }
  ++count_;
  sum_ += v;
}

std::string Histogram::render(const std::string& name, const std::string& help) const {
  std::string out = fmt::format("# HELP {} {}\n# TYPE {} histogram\n", name, help, name);
  for (size_t i = 0; i < bounds_.size(); ++i) {
    out += fmt::format("{}_bucket{{le=\"{}\"}} {}\n", name, bounds_[i], counts_[i]);
  }
  out += fmt::format("{}_bucket{{le=\"+Inf\"}} {}\n{}_sum {}\n{}_count {}\n", name, count_, name,
                     sum_, name, count_);
  return out;
}

Metrics::Metrics()
    : ttft_({0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30}),
      itl_({0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5}) {}

void Metrics::request(const std::string& endpoint, int status) {
  std::lock_guard lk(mu_);
  ++requests_[{endpoint, status}];
}

void Metrics::first_token(double s) {
  std::lock_guard lk(mu_);
  ttft_.observe(s);
}

void Metrics::inter_token(double s) {
  std::lock_guard lk(mu_);
  itl_.observe(s);
}

void Metrics::set_queue(int waiting, bool running) {
  std::lock_guard lk(mu_);
  waiting_ = waiting;
  running_ = running;
}

void Metrics::generation(const RunReport& r) {
  std::lock_guard lk(mu_);
  ++generations_;
  stopped_ += r.stopped;
  tokens_ += r.tokens.size();
  prompt_tokens_ += r.prompt.size();
  accepted_ += r.stats.drafts_accepted;
  rejected_ += r.stats.drafts_rejected;
  launched_ += r.stats.tasks_launched;
  preempted_ += r.stats.tasks_preempted;
  for (int i = 0; i < SchedulerStats::kPositions; ++i) {
    accepted_at_[i] += r.stats.accepted_at[i];
    rejected_at_[i] += r.stats.rejected_at[i];
  }
  wasted_s_ += r.wasted_target_s();
  generate_s_ += r.elapsed_s;
  for (const auto& rk : r.ranks) busy_s_[rk.role] += rk.busy_s;
}

std::string Metrics::render() const {
  std::lock_guard lk(mu_);
  std::string o;
  auto counter = [&](const char* name, const char* help, double v) {
    o += fmt::format("# HELP {} {}\n# TYPE {} counter\n{} {}\n", name, help, name, name, v);
  };
  o += "# HELP dsi_requests_total HTTP requests by endpoint and status.\n"
       "# TYPE dsi_requests_total counter\n";
  for (const auto& [k, n] : requests_) {
    o += fmt::format("dsi_requests_total{{endpoint=\"{}\",status=\"{}\"}} {}\n", k.first, k.second,
                     n);
  }
  counter("dsi_generations_total", "Generations run.", static_cast<double>(generations_));
  counter("dsi_generations_stopped_total",
          "Generations ended early (client gone, deadline, stop string).",
          static_cast<double>(stopped_));
  counter("dsi_tokens_generated_total", "Tokens generated.", static_cast<double>(tokens_));
  counter("dsi_prompt_tokens_total", "Prompt tokens processed.",
          static_cast<double>(prompt_tokens_));
  o += ttft_.render("dsi_time_to_first_token_seconds", "Request arrival to first token.");
  o += itl_.render("dsi_inter_token_latency_seconds", "Time between streamed tokens.");
  o += fmt::format(
      "# HELP dsi_queue_depth Requests waiting.\n# TYPE dsi_queue_depth gauge\ndsi_queue_depth "
      "{}\n# HELP dsi_running Whether a generation runs.\n# TYPE dsi_running gauge\n"
      "dsi_running {}\n",
      waiting_, running_ ? 1 : 0);
  counter("dsi_drafts_accepted_total", "Drafts accepted.", static_cast<double>(accepted_));
  counter("dsi_drafts_rejected_total", "Drafts rejected.", static_cast<double>(rejected_));
  const double n = static_cast<double>(accepted_ + rejected_);
  o += fmt::format("# HELP dsi_acceptance_rate Drafts accepted over drafts checked, since start.\n"
                   "# TYPE dsi_acceptance_rate gauge\ndsi_acceptance_rate {}\n",
                   n > 0 ? accepted_ / n : 0);
  o += "# HELP dsi_draft_acceptance_by_position Acceptance by draft position in its chain.\n"
       "# TYPE dsi_draft_acceptance_by_position gauge\n";
  for (int i = 0; i < SchedulerStats::kPositions; ++i) {
    const double m = static_cast<double>(accepted_at_[i] + rejected_at_[i]);
    if (m > 0) {
      o += fmt::format("dsi_draft_acceptance_by_position{{position=\"{}\"}} {}\n", i,
                       accepted_at_[i] / m);
    }
  }
  counter("dsi_verifications_launched_total", "Target verifications launched.",
          static_cast<double>(launched_));
  counter("dsi_verifications_preempted_total", "Verifications preempted by a rejection.",
          static_cast<double>(preempted_));
  counter("dsi_wasted_target_seconds_total", "Target time spent on preempted verifications.",
          wasted_s_);
  counter("dsi_generate_seconds_total", "Time spent generating.", generate_s_);
  o += "# HELP dsi_rank_busy_seconds_total Busy time by rank role.\n"
       "# TYPE dsi_rank_busy_seconds_total counter\n";
  for (const auto& [role, s] : busy_s_) {
    o += fmt::format("dsi_rank_busy_seconds_total{{role=\"{}\"}} {}\n", role, s);
  }
  return o;
}

}  // namespace dsi::serve
