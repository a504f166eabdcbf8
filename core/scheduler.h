// The DSI / SI / non-SI scheduler as a pure state machine: events in (a draft arrived, a
// verification finished or was cancelled), actions out (start a drafting chain, launch or
// cancel a verification on a target). No clocks, no I/O: the coordinator drives it over a
// ControlChannel, the simulator drives it in virtual time, and unit tests drive it by hand.
// Greedy verification: a result carries the target's own token at each checked position.
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "engines/engine.h"

namespace dsi {

enum class Mode { kNonSi, kSi, kDsi };
const char* mode_name(Mode m);
std::optional<Mode> parse_mode(std::string_view s);

// What to do with a new task when every target is busy.
enum class QueuePolicy {
  kNewest,  // keep only the newest queued task: it covers every older one of its chain
  kFifo,    // launch in order of creation
};
const char* queue_policy_name(QueuePolicy p);
std::optional<QueuePolicy> parse_queue_policy(std::string_view s);

// Which idle target a task goes to.
enum class TargetChoice {
  kCache,       // the one whose KV cache holds the longest prefix of its sequence
  kRoundRobin,  // the next idle one after the last chosen (spreads work, e.g. to test handoff)
};

struct SchedulerOptions {
  Mode mode = Mode::kDsi;
  int lookahead = 5;       // k: a task after every k-th draft of a chain
  int n_targets = 1;       // SP degree (SI and non-SI use the first target only)
  int max_new_tokens = 64;
  QueuePolicy queue = QueuePolicy::kNewest;
  TargetChoice target_choice = TargetChoice::kCache;
  std::vector<Token> stop_tokens;  // committing one ends generation (EOS)
};

struct Action {
  enum Kind { kStartChain, kVerify, kCancel } kind;
  int target = -1;         // kVerify, kCancel: target index in [0, n_targets)
  uint64_t id = 0;         // chain id (kStartChain) or task id
  std::vector<Token> seq;  // kStartChain: committed sequence; kVerify: sequence S to verify
  int n_logits = 0;        // kVerify: positions to check (m = drafts + 1)
  int window = -1;         // kStartChain: drafts allowed in this chain (-1 = unlimited)
  int stop_len = 0;        // kStartChain: do not draft a position >= stop_len
  uint64_t chain = 0;      // kVerify: the chain its drafts come from
  int bonus_anchor = -1;   // kVerify: sampling decides anchor + i * period from p (BonusRule)
  int bonus_period = 0;
};

struct SchedulerStats {
  int64_t tasks_launched = 0;
  int64_t tasks_completed = 0;
  int64_t tasks_preempted = 0;         // cancelled while running on a target
  int64_t tasks_cancelled_queued = 0;  // dropped before they reached a target
  int64_t drafts_received = 0;
  int64_t drafts_accepted = 0;  // drafts that became committed tokens unchanged
  int64_t drafts_rejected = 0;  // first mismatching draft of each rejection
  int64_t chains = 0;
  int64_t stale_results = 0;  // results that arrived after their cancel and added nothing
};

class Scheduler {
 public:
  Scheduler(SchedulerOptions opts, std::vector<Token> prompt);

  std::vector<Action> start();
  std::vector<Action> on_draft(uint64_t chain, int pos, Token token);
  // y: the target's tokens at positions |S|-m+1 .. |S| of the task's sequence S.
  std::vector<Action> on_result(uint64_t task, std::span<const Token> y);
  std::vector<Action> on_cancelled(uint64_t task);

  bool done() const { return done_; }
  const std::vector<Token>& committed() const { return committed_; }
  int prompt_len() const { return prompt_len_; }
  int generated() const { return static_cast<int>(committed_.size()) - prompt_len_; }
  const SchedulerStats& stats() const { return stats_; }
  // Tasks running (or being cancelled) on targets, queued, and the target each runs on.
  int running() const { return static_cast<int>(running_.size()); }
  int queued() const { return static_cast<int>(queue_.size()); }
  // Whether `task` was cancelled by the scheduler (its span is wasted work).
  bool was_cancelled(uint64_t task) const;

 private:
  struct Task {
    uint64_t id;
    std::vector<Token> seq;
    int n_logits;
    uint64_t chain = 0;
    int anchor = 0;  // chain start when it was created
    int target = -1;
    bool cancelling = false;
  };

  void new_chain(std::vector<Action>& out);
  void submit(std::vector<Token> seq, int n_logits, std::vector<Action>& out);
  void launch_queued(std::vector<Action>& out);
  // Commits the target tokens a result proves (it ignores a stale result).
  void apply(const Task& t, std::span<const Token> y);
  void reconcile(std::vector<Action>& out);
  void finish(std::vector<Action>& out);
  bool useful(const Task& t) const;
  int goal_len() const { return prompt_len_ + opts_.max_new_tokens; }
  void free_target(uint64_t task);

  SchedulerOptions opts_;
  int prompt_len_;
  std::vector<Token> committed_;
  bool done_ = false;

  // The current drafting chain: drafts_[i] is the draft at position chain_base_ + i.
  uint64_t chain_ = 0;
  int chain_base_ = 0;
  std::vector<Token> drafts_;
  int checked_ = 0;  // drafts_ already compared with committed tokens

  uint64_t next_task_ = 1;
  std::map<uint64_t, Task> running_;  // by task id
  std::deque<Task> queue_;
  std::vector<uint64_t> target_task_;           // 0 = idle
  int last_target_ = -1;                        // round robin
  std::vector<std::vector<Token>> target_seq_;  // last sequence each target verified
  std::map<uint64_t, bool> cancelled_;
  SchedulerStats stats_;
};

}  // namespace dsi
