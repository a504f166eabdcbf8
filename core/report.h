// What a run leaves behind: the coordinator's RunReport, and the three ways it is written out
// (the Chrome / Perfetto trace, the machine-readable summary, the human summary).
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/adapt.h"
#include "core/config.h"
#include "core/kv_handoff.h"
#include "core/scheduler.h"
#include "core/spans.h"

namespace dsi {

struct RankReport {
  int rank = 0;
  std::string role;
  double busy_s = 0;
  double wasted_s = 0;
  std::vector<Span> spans;
};

struct RunReport {
  RunConfig cfg;
  int n_targets = 0;
  std::vector<Token> prompt;
  std::vector<Token> tokens;  // generated
  bool stopped = false;       // ended early by the caller's stop flag
  std::string text;           // generated text (real models)
  double setup_s = 0;         // configure + prefill
  double elapsed_s = 0;       // first scheduler action to last commit
  double latency_per_token_ms = 0;
  SchedulerStats stats;
  std::vector<RankReport> ranks;
  KvHandoffStats kv;
  int64_t proposal_waits_given_up = 0;  // merged drafters: SI windows launched without all
  // runtime.adapt: the policy's decisions, the tokens generated under each mode (by Mode)
  // and its estimates at the end.
  std::vector<AdaptDecision> adapt;
  std::array<int64_t, 3> tokens_by_mode{};
  AdaptEstimates adapt_final;
  nlohmann::json events = nlohmann::json::array();  // coordinator instants for the trace
  double acceptance_rate() const {
    const double n = static_cast<double>(stats.drafts_accepted + stats.drafts_rejected);
    return n > 0 ? stats.drafts_accepted / n : 0;
  }
  double wasted_target_s() const;
};

// One decision of the adaptive policy, as JSON (the summary and the trace).
nlohmann::json adapt_json(const AdaptDecision& d);

// Chrome / Perfetto trace JSON of a run: one process per rank.
nlohmann::json trace_json(const RunReport& r);
// The machine-readable summary (`--json`).
nlohmann::json summary_json(const RunReport& r);
// The human summary printed at the end of a run.
std::string summary_text(const RunReport& r);

}  // namespace dsi
