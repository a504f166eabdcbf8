// The coordinator (rank 0): configures the worker ranks for a run, drives the Scheduler with
// the drafts and verification results they send, executes its actions, keeps every peer's
// liveness, and collects the per-rank reports (busy time, trace spans) at the end of a run.
#pragma once

#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <stdexcept>

#include "core/protocol.h"
#include "core/config.h"
#include "core/scheduler.h"
#include "core/spans.h"
#include "core/worker_spec.h"
#include "model/text_model.h"

namespace dsi {

// A worker failed (Error message) or fell silent; `rank` names it.
struct PeerError : std::runtime_error {
  PeerError(int r, const std::string& what, bool is_dead)
      : std::runtime_error(what), rank(r), dead(is_dead) {}
  int rank;
  bool dead;  // silent (dead or wedged) rather than reporting an error
};

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
  std::string text;           // generated text (real models)
  double setup_s = 0;         // configure + prefill
  double elapsed_s = 0;       // first scheduler action to last commit
  double latency_per_token_ms = 0;
  SchedulerStats stats;
  std::vector<RankReport> ranks;
  KvHandoffStats kv;
  nlohmann::json events = nlohmann::json::array();  // coordinator instants for the trace
  double acceptance_rate() const {
    const double n = static_cast<double>(stats.drafts_accepted + stats.drafts_rejected);
    return n > 0 ? stats.drafts_accepted / n : 0;
  }
  double wasted_target_s() const;
};

// Rank layout: 0 coordinator, 1..D drafters, then the targets.
std::string role_of_rank(int rank, int n_drafters, int n_targets);

class Coordinator {
 public:
  Coordinator(ControlChannel& ch, int heartbeat_ms, double peer_timeout_s);
  // Runs one generation with n_targets target ranks. on_commit sees tokens as they commit.
  RunReport run(const RunConfig& cfg, int n_targets,
                const std::function<void(std::span<const Token>)>& on_commit = {});
  // The tokenizer side of a model (cached by path).
  std::shared_ptr<const TextModel> text_model(const std::string& path);
  // Tells every worker to leave its loop with `code`.
  void exit_all(int code);

 private:
  std::optional<Envelope> next(Clock::time_point deadline);
  std::map<int, Message> wait_all(const std::vector<int>& ranks, MsgType type);

  ControlLink ch_;
  std::chrono::milliseconds heartbeat_;
  std::chrono::duration<double> timeout_;
  std::vector<Clock::time_point> last_heard_;
  Clock::time_point next_hb_;
  uint32_t run_ = 0;
  std::vector<std::string> roles_;  // role of each rank in the current run, for messages
  std::map<std::string, std::shared_ptr<const TextModel>> text_models_;  // by path
  std::string name(int rank) const;
};

// Chrome / Perfetto trace JSON of a run: one process per rank.
nlohmann::json trace_json(const RunReport& r);
// The machine-readable summary (`--json`).
nlohmann::json summary_json(const RunReport& r);
// The human summary printed at the end of a run.
std::string summary_text(const RunReport& r);

}  // namespace dsi
