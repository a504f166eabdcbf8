// The DSI / SI / non-SI scheduler as a pure state machine: events in (a target prefilled the
// prompt, a draft arrived, a verification finished or was cancelled), actions out (prefill a
// target, start a drafting chain, launch or cancel a verification on a target, hand KV from
// one target to another). No clocks, no I/O: the coordinator drives it over a ControlChannel,
// the simulator drives it in virtual time, and unit tests drive it by hand. It holds the one
// model of each target's KV cache (KvPlanner, core/kv_handoff.h) that both target choice and
// KV handoff planning read. Greedy verification: a result carries the target's own token at
// each checked position.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "common/token.h"
#include "common/token_tree.h"
#include "core/kv_handoff.h"

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

// What runs from a chain boundary on (the adaptive policy's choice, core/adapt.h): the mode,
// the lookahead k, and how many targets (the first sp) take tasks. Non-SI uses one target.
struct ChainPlan {
  Mode mode = Mode::kDsi;
  int lookahead = 5;
  int sp = 1;
  bool operator==(const ChainPlan&) const = default;
};

struct SchedulerOptions {
  Mode mode = Mode::kDsi;
  int lookahead = 5;  // k: a task after every k-th draft of a chain
  int n_targets = 1;  // SP degree (SI and non-SI use the first target only)
  int max_new_tokens = 64;
  QueuePolicy queue = QueuePolicy::kNewest;
  TargetChoice target_choice = TargetChoice::kCache;
  std::vector<Token> stop_tokens;  // committing one ends generation (EOS)
  KvHandoffOptions kv;             // KV handoff between targets (default: none)
  // Token trees of this shape (branching factor per depth). SI: the drafter drafts one tree
  // per chain and the target verifies it at once. DSI: the drafter drafts one tree after
  // another down their first paths (its chain), and each tree's task verifies the chain's
  // pending drafts and the tree below them. Empty: chains.
  std::vector<int> tree;
  // Merged drafters: drafters beyond the lead (roles.drafters - 1). Each proposes its own token
  // at the positions of the lead's chain (on_proposals); where one differs from the lead's
  // draft it joins the task as a sibling, so tasks verify token trees: the lead's chain plus
  // one leaf per distinct proposal. SI waits for the proposals of its window (stop_waiting()
  // gives up on them); DSI takes those that have come.
  int followers = 0;
};

struct Action {
  enum Kind {
    kPrefill,     // target caches seq (the prompt but its last token); report on_prefilled
    kStartChain,  // the drafter drafts from seq
    kVerify,      // target verifies seq
    kCancel,      // target drops task id (running or queued)
    kKvHandoff,   // target (the source) sends the KV of [begin, end) of seq to target dst
  } kind;
  int target = -1;         // target index in [0, n_targets); kKvHandoff: the source
  uint64_t id = 0;         // chain id (kStartChain), task id, or handoff id (kKvHandoff)
  std::vector<Token> seq;  // kPrefill: prefix to cache; kStartChain: committed sequence;
                           // kVerify: sequence S to verify; kKvHandoff: committed[0, end)
  int n_logits = 0;        // kVerify: positions to check (m = drafts + 1)
  int window = -1;         // kStartChain: drafts allowed in this chain (-1 = unlimited)
  int stop_len = 0;        // kStartChain: do not draft a position >= stop_len
  int notify_every = 1;    // kStartChain: the drafts the scheduler launches on (n·k)
  uint64_t chain = 0;      // kVerify: the chain its drafts come from
  int bonus_anchor = -1;   // kVerify: sampling decides anchor + i * period from p (BonusRule)
  int bonus_period = 0;
  int dst = -1;              // kKvHandoff: destination target
  int begin = 0, end = 0;    // kKvHandoff: token range; handoffs are numbered from 1 in plan
                             // order, which workers rely on (a destination drops older ones)
  std::vector<int> tree;     // kStartChain: draft one token tree of this shape (empty: a chain)
  std::vector<int> parents;  // kVerify of a tree: the parent of each of seq's last nodes
};

// What a target reported with a verification result: the forward's length and time (the
// KV cost model's observations).
struct Forward {
  int tokens = 0;      // tokens computed (the forward's length)
  double seconds = 0;  // the target's busy time on the task
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
  int64_t kv_handoffs = 0;    // KV handoffs planned (the prompt's included)
  // By draft position in its chain (0 = the chain's first draft; the last slot gathers the
  // positions beyond it): drafts accepted there, and rejections there.
  static constexpr int kPositions = 16;
  int64_t accepted_at[kPositions] = {};
  int64_t rejected_at[kPositions] = {};
  int64_t plan_changes = 0;  // chain boundaries where the planner changed the plan
  // Merged drafters: proposals received (one per follower and position), proposals that went
  // into a verification as siblings, and the siblings that were committed (tokens the lead's
  // chain missed and another drafter caught).
  int64_t proposals_received = 0;
  int64_t siblings_verified = 0;
  int64_t siblings_committed = 0;
};

class Scheduler {
 public:
  Scheduler(SchedulerOptions opts, std::vector<Token> prompt);

  // Prefill: every target caches the prompt but its last token. Targets sharing a device
  // (or all, with kv_handoff: always) take the first target's KV once it has reported,
  // instead of computing it again. Call before start(); prefilled() says when it is done.
  std::vector<Action> prefill();
  std::vector<Action> on_prefilled(int target);
  bool prefilled() const;
  bool prompt_handed_over() const { return prompt_handoff_; }

  // Called at every chain boundary (the start, each new chain, each non-SI step) for the plan
  // to follow from there; without one the options' mode, lookahead and n_targets hold for
  // the whole run. A plan never changes a token: greedy and the Gumbel coupling decide each
  // position from the prefix alone (docs/sampling.md). The drafter rank must exist (a world
  // configured for SI or DSI) for a plan other than non-SI.
  using Planner = std::function<ChainPlan()>;
  void set_planner(Planner p) { planner_ = std::move(p); }
  // What runs now.
  ChainPlan plan() const { return plan_; }
  // Asks the planner between boundaries (the coordinator does after each result): a changed
  // plan starts a new chain at once, so a long chain (high acceptance) cannot hold a plan
  // past its time. Tasks already running stay; they verify the committed text's continuation.
  std::vector<Action> checkpoint();

  std::vector<Action> start();
  std::vector<Action> on_draft(uint64_t chain, int pos, Token token);
  // The token tree drafted for `chain` from position pos (options.tree): verified at once.
  // DSI: the tree's first path (the first child of each node) is the chain's drafts from pos.
  // Throws Error for a malformed tree.
  std::vector<Action> on_draft_tree(uint64_t chain, int pos, const TokenTree& tree);
  // Merged drafters: follower f (0-based, of options.followers) proposes `tokens` at positions
  // pos, pos + 1, ... of `chain`. Throws std::invalid_argument for a follower it lacks.
  std::vector<Action> on_proposals(int follower, uint64_t chain, int pos,
                                   std::span<const Token> tokens);
  // SI holds its window's verification for the followers' proposals: whether it does now, and
  // the verification launched with the proposals that came (the coordinator's deadline).
  bool awaits_proposals() const { return si_waiting_; }
  std::vector<Action> stop_waiting();
  // y: the target's tokens at positions |S|-m+1 .. |S| of the task's sequence S; for a tree
  // task the accepted path's tokens, then the target's token after it. After it, KV handoffs
  // of what the task committed to the targets that lack it.
  std::vector<Action> on_result(uint64_t task, std::span<const Token> y, Forward f);
  std::vector<Action> on_cancelled(uint64_t task);

  bool done() const { return done_; }
  // The targets have committed past the drafts received: the next draft is checked at once
  // (it may be a rejection), so a deferred one should not wait for the next wake-up.
  bool awaits_drafts() const {
    return !done_ && plan_.mode != Mode::kNonSi &&
           committed_.size() > static_cast<size_t>(chain_base_) + drafts_.size();
  }
  const std::vector<Token>& committed() const { return committed_; }
  int prompt_len() const { return prompt_len_; }
  int generated() const { return static_cast<int>(committed_.size()) - prompt_len_; }
  const SchedulerStats& stats() const { return stats_; }
  // Tasks running (or being cancelled) on targets, queued, and the target each runs on.
  int running() const { return static_cast<int>(running_.size()); }
  int queued() const { return static_cast<int>(queue_.size()); }
  // The model of each target's KV cache.
  const KvPlanner& kv() const { return kv_; }

 private:
  struct Task {
    uint64_t id;
    std::vector<Token> seq;
    int n_logits;
    uint64_t chain = 0;
    int anchor = 0;  // chain start when it was created
    int period = 0;  // DSI: the chain's lookahead (the bonus grid); 0 otherwise
    int target = -1;
    bool cancelling = false;
    std::vector<int> parents;  // a tree task: seq's last parents.size() tokens are its nodes
    int spine = -1;            // merged drafters: the lead's drafts are its first spine nodes
    int base() const { return static_cast<int>(seq.size() - parents.size()); }
    TokenTree tree() const { return {{seq.begin() + base(), seq.end()}, parents}; }
  };

  void new_chain(std::vector<Action>& out);  // replan(), then begin_chain()
  void begin_chain(std::vector<Action>& out);
  // At a chain boundary: asks the planner (if any) what runs from here.
  void replan();
  void submit(std::vector<Token> seq, int n_logits, std::vector<Action>& out,
              std::vector<int> parents = {});
  void launch_queued(std::vector<Action>& out);
  // Commits the target tokens a result proves (it ignores a stale result).
  void apply(const Task& t, std::span<const Token> y);
  void apply_tree(const Task& t, std::span<const Token> y);
  void on_dsi_tree(int pos, const TokenTree& tree, std::vector<Action>& out);
  // A task verifying the chain's drafts from the committed text on (with the followers'
  // proposals as siblings, when any differs from the lead's draft).
  void submit_drafts(std::vector<Action>& out);
  bool proposals_complete() const;
  void commit(Token tok);  // appends; done_ at a stop token or the goal
  void reconcile(std::vector<Action>& out);
  void hand_over(const KvRange& r, std::vector<Action>& out);  // emits a kKvHandoff
  bool useful(const Task& t) const;
  int goal_len() const { return prompt_len_ + opts_.max_new_tokens; }
  void free_target(uint64_t task);

  SchedulerOptions opts_;
  ChainPlan plan_;  // what runs now
  Planner planner_;
  bool drafter_busy_ = false;  // the current chain gives the drafter work
  int prompt_len_;
  std::vector<Token> committed_;
  bool done_ = false;

  // The current drafting chain: drafts_[i] is the draft at position chain_base_ + i.
  uint64_t chain_ = 0;
  int chain_base_ = 0;
  std::vector<Token> drafts_;
  int checked_ = 0;            // drafts_ already compared with committed tokens
  bool tree_drafted_ = false;  // the chain's token tree has come (SI with trees)
  // Merged drafters: proposals_[f][i] is follower f's token at position chain_base_ + i.
  std::vector<std::vector<Token>> proposals_;
  bool si_waiting_ = false;  // SI: the window is drafted, its proposals are not all in

  uint64_t next_task_ = 1;
  std::map<uint64_t, Task> running_;  // by task id
  std::deque<Task> queue_;
  std::vector<uint64_t> target_task_;  // 0 = idle
  int last_target_ = -1;               // round robin
  KvPlanner kv_;                       // what each target caches, KV handoffs
  uint64_t next_handoff_ = 1;
  std::vector<bool> prefilled_;  // targets that reported their prefill
  bool prompt_handoff_ = false;
  SchedulerStats stats_;
};

}  // namespace dsi
