#include "core/scheduler.h"

#include <algorithm>
#include <stdexcept>

#include "common/error.h"

namespace dsi {

const char* mode_name(Mode m) {
  switch (m) {
    case Mode::kNonSi:
      return "nonsi";
    case Mode::kSi:
      return "si";
    case Mode::kDsi:
      return "dsi";
  }
  return "?";
}

std::optional<Mode> parse_mode(std::string_view s) {
  if (s == "nonsi") return Mode::kNonSi;
  if (s == "si") return Mode::kSi;
  if (s == "dsi") return Mode::kDsi;
  return std::nullopt;
}

const char* queue_policy_name(QueuePolicy p) {
  return p == QueuePolicy::kNewest ? "newest" : "fifo";
}

std::optional<QueuePolicy> parse_queue_policy(std::string_view s) {
  if (s == "newest") return QueuePolicy::kNewest;
  if (s == "fifo") return QueuePolicy::kFifo;
  return std::nullopt;
}

Scheduler::Scheduler(SchedulerOptions opts, std::vector<Token> prompt)
    : opts_(std::move(opts)),
      prompt_len_(static_cast<int>(prompt.size())),
      committed_(std::move(prompt)),
      target_task_(std::max(opts_.n_targets, 0), 0),
      kv_(std::max(opts_.n_targets, 0), opts_.kv),
      prefilled_(std::max(opts_.n_targets, 0), false) {
  plan_ = {.mode = opts_.mode, .lookahead = opts_.lookahead, .sp = opts_.n_targets};
  if (opts_.n_targets < 1) throw std::invalid_argument("scheduler needs at least one target");
  if (opts_.lookahead < 1) throw std::invalid_argument("lookahead must be at least 1");
  if (prompt_len_ < 1) throw std::invalid_argument("prompt must hold at least one token");
}

std::vector<Action> Scheduler::prefill() {
  std::vector<Action> out;
  std::vector<Token> prefix(committed_.begin(), committed_.begin() + (prompt_len_ - 1));
  prompt_handoff_ = kv_.hand_over_prompt(prefix.size());
  // With the prompt handed over, the others wait for the first target (on_prefilled).
  const int n = prompt_handoff_ ? 1 : opts_.n_targets;
  for (int t = 0; t < n; ++t)
    out.push_back(Action{.kind = Action::kPrefill, .target = t, .seq = prefix});
  return out;
}

std::vector<Action> Scheduler::on_prefilled(int target) {
  std::vector<Action> out;
  if (target < 0 || target >= opts_.n_targets) {
    throw std::invalid_argument("prefill reported by a target the scheduler does not have");
  }
  const std::span<const Token> prefix(committed_.data(), prompt_len_ - 1);
  kv_.computed(target, prefix);
  if (prefilled_[target]) return out;
  prefilled_[target] = true;
  if (prompt_handoff_ && target == 0) {
    // A Prefill after the import finds the prefix cached and only computes what is missing.
    for (int t = 1; t < opts_.n_targets; ++t) {
      const KvRange r{0, t, 0, static_cast<int>(prefix.size())};
      kv_.handed_over(r, committed_);
      hand_over(r, out);
      out.push_back(
          Action{.kind = Action::kPrefill, .target = t, .seq = {prefix.begin(), prefix.end()}});
    }
  }
  return out;
}

bool Scheduler::prefilled() const {
  return std::all_of(prefilled_.begin(), prefilled_.end(), [](bool b) { return b; });
}

void Scheduler::hand_over(const KvRange& r, std::vector<Action>& out) {
  ++stats_.kv_handoffs;
  out.push_back(Action{.kind = Action::kKvHandoff,
                       .target = r.src,
                       .id = next_handoff_++,
                       .seq = {committed_.begin(), committed_.begin() + r.end},
                       .dst = r.dst,
                       .begin = r.begin,
                       .end = r.end});
}

std::vector<Action> Scheduler::start() {
  std::vector<Action> out;
  if (opts_.max_new_tokens <= 0) {
    done_ = true;
    return out;
  }
  new_chain(out);
  launch_queued(out);
  return out;
}

void Scheduler::replan() {
  if (!planner_) return;
  const ChainPlan p = planner_();
  if (p.lookahead < 1 || p.sp < 1 || p.sp > opts_.n_targets) {
    throw std::invalid_argument("the planner's plan needs k >= 1 and 1 <= sp <= n_targets");
  }
  if (p != plan_) ++stats_.plan_changes;
  plan_ = p;
}

std::vector<Action> Scheduler::checkpoint() {
  std::vector<Action> out;
  if (done_ || !planner_ || plan_.mode == Mode::kNonSi) return out;
  const ChainPlan before = plan_;
  replan();
  if (plan_ == before) return out;
  // A boundary now: the running tasks stay (what they verify is still the committed text's
  // continuation), the drafter starts over from the committed text under the new plan.
  begin_chain(out);
  launch_queued(out);
  return out;
}

void Scheduler::new_chain(std::vector<Action>& out) {
  replan();
  begin_chain(out);
}

void Scheduler::begin_chain(std::vector<Action>& out) {
  ++chain_;
  chain_base_ = static_cast<int>(committed_.size());
  drafts_.clear();
  checked_ = 0;
  tree_drafted_ = false;
  proposals_.assign(std::max(0, opts_.followers), {});
  si_waiting_ = false;
  if (plan_.mode == Mode::kNonSi) {
    // One token at a time; a drafter still drafting an earlier chain gets a chain with no
    // window, which stops it.
    if (drafter_busy_) {
      out.push_back(Action{.kind = Action::kStartChain,
                           .id = chain_,
                           .seq = committed_,
                           .window = 0,
                           .stop_len = goal_len()});
      drafter_busy_ = false;
    }
    submit(committed_, 1, out);
    return;
  }
  ++stats_.chains;
  drafter_busy_ = true;
  const int window = plan_.mode == Mode::kSi ? plan_.lookahead : -1;
  out.push_back(Action{.kind = Action::kStartChain,
                       .id = chain_,
                       .seq = committed_,
                       .window = window,
                       .stop_len = goal_len(),
                       .notify_every = plan_.lookahead,
                       .tree = opts_.tree});
  // DSI launches a task with no drafts at every chain start: never slower than non-SI.
  if (plan_.mode == Mode::kDsi) submit(committed_, 1, out);
}

void Scheduler::submit(std::vector<Token> seq, int n_logits, std::vector<Action>& out,
                       std::vector<int> parents) {
  Task t{next_task_++, std::move(seq), n_logits,
         chain_,       chain_base_,    plan_.mode == Mode::kDsi ? plan_.lookahead : 0};
  t.parents = std::move(parents);
  if (opts_.queue == QueuePolicy::kNewest) {
    // A queued task whose sequence is a prefix of the new one proves nothing the new one
    // does not; drop it.
    for (auto it = queue_.begin(); it != queue_.end();) {
      if (common_prefix(it->seq, t.seq) == it->seq.size()) {
        ++stats_.tasks_cancelled_queued;
        it = queue_.erase(it);
      } else {
        ++it;
      }
    }
  }
  queue_.push_back(std::move(t));
  (void)out;
}

void Scheduler::launch_queued(std::vector<Action>& out) {
  while (!queue_.empty()) {
    Task& t = opts_.queue == QueuePolicy::kNewest ? queue_.back() : queue_.front();
    int best = -1;
    const int n = plan_.sp;  // the targets in use
    if (opts_.target_choice == TargetChoice::kRoundRobin) {
      for (int j = 1; j <= n && best < 0; ++j) {
        const int i = (last_target_ + j) % n;
        if (target_task_[i] == 0) best = i;
      }
    } else {
      // The idle target whose KV cache already holds the longest prefix of the sequence.
      size_t best_len = 0;
      for (int i = 0; i < n; ++i) {
        if (target_task_[i] != 0) continue;
        const size_t l = common_prefix(kv_.cached(i), t.seq);
        if (best < 0 || l > best_len) {
          best = i;
          best_len = l;
        }
      }
    }
    if (best < 0) return;
    last_target_ = best;
    t.target = best;
    target_task_[best] = t.id;
    ++stats_.tasks_launched;
    Action a{.kind = Action::kVerify,
             .target = best,
             .id = t.id,
             .seq = t.seq,
             .n_logits = t.n_logits,
             .chain = t.chain,
             .parents = t.parents};
    if (t.period > 0) {
      // DSI tasks end on the grid chain start + i*k; the bonus rule keeps every position on
      // it a target sample whichever task decides it (core/verify.h).
      a.bonus_anchor = t.anchor;
      a.bonus_period = t.period;
    }
    out.push_back(std::move(a));
    running_.emplace(t.id, std::move(t));
    if (opts_.queue == QueuePolicy::kNewest) {
      queue_.pop_back();
    } else {
      queue_.pop_front();
    }
  }
}

std::vector<Action> Scheduler::on_draft(uint64_t chain, int pos, Token token) {
  std::vector<Action> out;
  if (done_ || chain != chain_ || plan_.mode == Mode::kNonSi) return out;
  if (pos != chain_base_ + static_cast<int>(drafts_.size())) return out;  // out of order: drop
  drafts_.push_back(token);
  ++stats_.drafts_received;
  const int n = static_cast<int>(drafts_.size());
  const int c = static_cast<int>(committed_.size());
  const bool at_goal = chain_base_ + n >= goal_len();
  const bool launch = plan_.mode == Mode::kDsi ? (n % plan_.lookahead == 0 || at_goal)
                                               : (n == plan_.lookahead || at_goal);
  if (launch && pos >= c) {
    if (plan_.mode == Mode::kSi && !proposals_complete()) {
      si_waiting_ = true;  // on_proposals or stop_waiting launches it
    } else {
      submit_drafts(out);
    }
  }
  reconcile(out);
  return out;
}

void Scheduler::submit_drafts(std::vector<Action>& out) {
  // Verify every pending draft: S = committed + drafts beyond it.
  const int c = static_cast<int>(committed_.size());
  const int from = std::max(0, c - chain_base_);
  std::vector<Token> seq = committed_;
  if (from < static_cast<int>(drafts_.size())) {
    seq.insert(seq.end(), drafts_.begin() + from, drafts_.end());
  }
  const int n = static_cast<int>(seq.size()) - c;  // the drafts
  // The followers' proposals at depth d (position c + d; d = n is after the last draft)
  // that differ from the lead's draft there and from each other: leaves below depth d - 1.
  TokenTree tree;
  if (c >= chain_base_ && !proposals_.empty()) {
    tree = TokenTree::chain(std::span(seq).subspan(c));
    for (int d = 0; d <= n; ++d) {
      const size_t i = static_cast<size_t>(c - chain_base_ + d);
      std::vector<Token> seen;
      if (d < n) seen.push_back(seq[c + d]);
      for (const auto& props : proposals_) {
        if (i >= props.size() || std::find(seen.begin(), seen.end(), props[i]) != seen.end()) {
          continue;
        }
        seen.push_back(props[i]);
        tree.add(props[i], d - 1);
      }
    }
  }
  if (tree.size() > n) {
    stats_.siblings_verified += tree.size() - n;
    seq.insert(seq.end(), tree.tokens.begin() + n, tree.tokens.end());
    submit(std::move(seq), tree.size() + 1, out, std::move(tree.parents));
    queue_.back().spine = n;
  } else {
    submit(std::move(seq), n + 1, out);
  }
}

bool Scheduler::proposals_complete() const {
  for (const auto& p : proposals_) {
    if (p.size() < drafts_.size()) return false;
  }
  return true;
}

std::vector<Action> Scheduler::on_proposals(int follower, uint64_t chain, int pos,
                                            std::span<const Token> tokens) {
  std::vector<Action> out;
  if (follower < 0 || follower >= opts_.followers) {
    throw std::invalid_argument("proposals from a drafter the scheduler does not have");
  }
  if (done_ || chain != chain_ || plan_.mode == Mode::kNonSi) return out;
  auto& props = proposals_[follower];
  if (pos != chain_base_ + static_cast<int>(props.size())) return out;  // out of order: drop
  props.insert(props.end(), tokens.begin(), tokens.end());
  stats_.proposals_received += static_cast<int64_t>(tokens.size());
  if (si_waiting_ && proposals_complete()) return stop_waiting();
  return out;
}

std::vector<Action> Scheduler::stop_waiting() {
  std::vector<Action> out;
  if (!si_waiting_) return out;
  si_waiting_ = false;
  submit_drafts(out);
  launch_queued(out);
  return out;
}

std::vector<Action> Scheduler::on_draft_tree(uint64_t chain, int pos, const TokenTree& tree) {
  std::vector<Action> out;
  if (done_ || chain != chain_ || plan_.mode == Mode::kNonSi || opts_.tree.empty()) return out;
  if (const std::string why = tree.invalid(); !why.empty() || tree.size() == 0) {
    throw Error("the drafter's token tree is malformed: " + (why.empty() ? "no nodes" : why));
  }
  if (plan_.mode == Mode::kDsi) {
    on_dsi_tree(pos, tree, out);
    return out;
  }
  if (pos != chain_base_ || pos != static_cast<int>(committed_.size())) return out;  // stale
  stats_.drafts_received += tree.size();
  tree_drafted_ = true;
  std::vector<Token> seq = committed_;
  seq.insert(seq.end(), tree.tokens.begin(), tree.tokens.end());
  submit(std::move(seq), tree.size() + 1, out, tree.parents);
  launch_queued(out);
  return out;
}

void Scheduler::on_dsi_tree(int pos, const TokenTree& tree, std::vector<Action>& out) {
  if (pos != chain_base_ + static_cast<int>(drafts_.size())) return;  // out of order: drop
  const std::vector<int> first = tree.first_path();
  stats_.drafts_received += tree.size();
  for (int node : first) drafts_.push_back(tree.tokens[node]);
  // The task: the committed text, the chain's drafts between it and pos, and the tree below
  // them (below the committed text's end when that is already inside the tree).
  const int c = static_cast<int>(committed_.size());
  TokenTree task;
  if (c <= pos) {
    task = TokenTree::chain(std::span(drafts_).subspan(c - chain_base_, pos - c));
    const int top = task.size();
    for (int i = 0; i < tree.size(); ++i) {
      task.add(tree.tokens[i], tree.parents[i] < 0 ? top - 1 : top + tree.parents[i]);
    }
  } else if (const int m = c - pos; m < static_cast<int>(first.size()) &&
                                    std::equal(committed_.begin() + pos, committed_.end(),
                                               drafts_.begin() + (pos - chain_base_))) {
    task = tree.below(first[m - 1]);
  }
  if (task.size() > 0) {
    std::vector<Token> seq = committed_;
    seq.insert(seq.end(), task.tokens.begin(), task.tokens.end());
    submit(std::move(seq), task.size() + 1, out, std::move(task.parents));
  }
  reconcile(out);
}

void Scheduler::commit(Token tok) {
  committed_.push_back(tok);
  const bool stop =
      std::find(opts_.stop_tokens.begin(), opts_.stop_tokens.end(), tok) != opts_.stop_tokens.end();
  if (stop || static_cast<int>(committed_.size()) >= goal_len()) done_ = true;
}

void Scheduler::apply_tree(const Task& t, std::span<const Token> y) {
  // y: a top-down path of the tree's tokens, then the target's token after it.
  const TokenTree tree = t.tree();
  if (y.empty()) throw Error("a tree verification's result holds no token");
  if (tree.follow(y.first(y.size() - 1)) == -2) {
    throw Error("a tree verification's result is not a path of its tree");
  }
  const int base = t.base();
  const int have = static_cast<int>(committed_.size()) - base;  // committed since it was made
  if (have < 0 || have >= static_cast<int>(y.size()) ||
      common_prefix(t.seq, committed_) < static_cast<size_t>(base) ||
      !std::equal(y.begin(), y.begin() + have, committed_.begin() + base)) {
    return;  // stale, or nothing new
  }
  if (t.spine >= 0 && y.size() > 1 && tree.follow(y.first(y.size() - 1)) >= t.spine) {
    ++stats_.siblings_committed;  // the accepted path ends at a follower's proposal
  }
  if (t.period == 0 && t.spine < 0) {
    // SI trees: the chain's drafts are the tree's (chains count their drafts in reconcile).
    const int accepted = static_cast<int>(y.size()) - 1;
    stats_.drafts_accepted += accepted;
    for (int d = 0; d < accepted; ++d)
      ++stats_.accepted_at[std::min(d, SchedulerStats::kPositions - 1)];
    if (accepted < tree.height()) {
      ++stats_.drafts_rejected;
      ++stats_.rejected_at[std::min(accepted, SchedulerStats::kPositions - 1)];
    }
  }
  for (Token tok : y.subspan(have)) {
    if (done_) break;
    commit(tok);
  }
}

void Scheduler::apply(const Task& t, std::span<const Token> y) {
  if (!t.parents.empty()) {
    apply_tree(t, y);
    return;
  }
  const int s = static_cast<int>(t.seq.size());
  const int first = s - t.n_logits + 1;  // position predicted by y[0]
  int p = static_cast<int>(committed_.size());
  if (static_cast<int>(y.size()) != t.n_logits) {
    throw Error("verification result has the wrong number of tokens");
  }
  if (p < first || p > s) return;
  for (int q = first; q < p; ++q) {
    if (t.seq[q] != committed_[q]) return;  // its drafts were rejected since: stale
  }
  while (p <= s && !done_) {
    const Token tok = y[p - first];
    commit(tok);
    if (p < s && t.seq[p] != tok) break;  // correction: later predictions assumed the draft
    ++p;
  }
}

bool Scheduler::useful(const Task& t) const {
  const size_t c = committed_.size();
  if (!t.parents.empty()) {
    // A tree task predicts the token after each of its nodes: useful while the committed text
    // runs from its base down a path of its tree.
    const size_t base = t.base();
    return c >= base && common_prefix(t.seq, committed_) >= base &&
           t.tree().follow(std::span(committed_).subspan(base)) != -2;
  }
  if (t.seq.size() < c) return false;  // predicts only committed positions
  return common_prefix(t.seq, committed_) == c;
}

void Scheduler::reconcile(std::vector<Action>& out) {
  bool reject = false;
  if (plan_.mode != Mode::kNonSi) {
    const int c = static_cast<int>(committed_.size());
    while (checked_ < static_cast<int>(drafts_.size()) && chain_base_ + checked_ < c) {
      const int slot = std::min(checked_, SchedulerStats::kPositions - 1);
      if (drafts_[checked_] == committed_[chain_base_ + checked_]) {
        ++stats_.drafts_accepted;
        ++stats_.accepted_at[slot];
        ++checked_;
      } else {
        ++stats_.drafts_rejected;
        ++stats_.rejected_at[slot];
        reject = true;
        break;
      }
    }
  }
  // Preempt running tasks that a rejection made stale or that commits made pointless, and
  // drop such queued ones.
  for (auto& [id, t] : running_) {
    if (!t.cancelling && (done_ || !useful(t))) {
      t.cancelling = true;
      if (!done_) {
        ++stats_.tasks_preempted;
        out.push_back(Action{.kind = Action::kCancel, .target = t.target, .id = id});
      }
    }
  }
  for (auto it = queue_.begin(); it != queue_.end();) {
    if (done_ || !useful(*it)) {
      ++stats_.tasks_cancelled_queued;
      it = queue_.erase(it);
    } else {
      ++it;
    }
  }
  if (done_) return;
  if (reject) new_chain(out);

  bool in_flight = !queue_.empty();
  for (const auto& [id, t] : running_) in_flight |= !t.cancelling;
  if (!in_flight) {
    if (plan_.mode == Mode::kNonSi) {
      new_chain(out);  // a boundary: the next token, or a switch to speculation
    } else if (plan_.mode == Mode::kSi && !reject && !si_waiting_) {
      // SI: a verification finished (or none is needed yet); drafting resumes from the new
      // committed prefix once the previous window has been verified.
      const bool window_spent = tree_drafted_ ||
                                static_cast<int>(drafts_.size()) >= plan_.lookahead ||
                                chain_base_ + static_cast<int>(drafts_.size()) >= goal_len();
      if (window_spent || static_cast<int>(committed_.size()) > chain_base_) new_chain(out);
    } else if (plan_.mode == Mode::kDsi &&
               chain_base_ + static_cast<int>(drafts_.size()) >= goal_len()) {
      // The drafter has stopped at the goal: verify whatever is still pending.
      submit_drafts(out);
    }
  }
  launch_queued(out);
}

void Scheduler::free_target(uint64_t task) {
  auto it = running_.find(task);
  if (it == running_.end()) return;
  target_task_[it->second.target] = 0;
  running_.erase(it);
}

std::vector<Action> Scheduler::on_result(uint64_t task, std::span<const Token> y, Forward f) {
  std::vector<Action> out;
  auto it = running_.find(task);
  if (it == running_.end()) return out;
  Task t = std::move(it->second);
  free_target(task);
  ++stats_.tasks_completed;
  if (t.parents.empty()) {
    kv_.computed(t.target, t.seq);  // the worker caches the whole sequence
  } else {
    // A tree's target keeps the committed text and the accepted path (y but its last token).
    std::vector<Token> kept(t.seq.begin(), t.seq.begin() + t.base());
    if (!y.empty()) kept.insert(kept.end(), y.begin(), y.end() - 1);
    kv_.computed(t.target, kept);
  }
  kv_.observe(f.tokens, f.seconds);
  const size_t before = committed_.size();
  if (!done_) apply(t, y);
  if (t.cancelling && committed_.size() == before) ++stats_.stale_results;
  if (done_) return out;
  reconcile(out);
  // The targets launched above run first; then hand what t committed to the targets that
  // lack it (a busy one imports after its forward, or finds it needs nothing).
  for (const KvRange& r : kv_.plan_committed(t.target, committed_, plan_.sp)) hand_over(r, out);
  return out;
}

std::vector<Action> Scheduler::on_cancelled(uint64_t task) {
  std::vector<Action> out;
  auto it = running_.find(task);
  if (it == running_.end()) return out;
  // If it had started, the worker rolled back to what it kept of the task's sequence (of a
  // tree's: the committed text but its last token, whose logits the tree needs).
  const Task& t = it->second;
  if (t.parents.empty()) {
    kv_.cancelled(t.target, t.seq, t.n_logits);
  } else {
    kv_.cancelled(t.target, std::span(t.seq).first(t.base()), 1);
  }
  free_target(task);
  if (!done_) reconcile(out);
  return out;
}

}  // namespace dsi
