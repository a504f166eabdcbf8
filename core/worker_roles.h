// The roles of a worker rank (core/worker.cc runs them on its working thread) and what they
// share: WorkerContext holds the engine and the tokens whose KV it holds, the data channel,
// the run's sampling parameters, log and counters, and the way back to the coordinator.
//   target    core/target_role.cc   verifies drafts (greedy or speculative sampling)
//   drafter   core/drafter_role.cc  drafts along the chain the coordinator last started
//   handoff   core/handoff_role.cc  sends or imports a range of KV for another target
#pragma once

#include <algorithm>
#include <atomic>
#include <climits>
#include <memory>
#include <mutex>
#include <span>
#include <vector>

#include "common/cancel.h"
#include "core/protocol.h"
#include "core/spans.h"
#include "core/verify.h"
#include "core/worker.h"
#include "engines/engine.h"
#include "transport/data_channel.h"

namespace dsi {

struct WorkerContext {
  WorkerContext(ControlChannel& ch, WorkerOptions o, DataChannel* d)
      : link(ch), opts(std::move(o)), data(d) {}

  ControlLink link;  // thread-safe
  const WorkerOptions opts;
  DataChannel* data;             // may be null
  std::atomic<uint32_t> run{0};  // the current run; read by the receiving thread too
  CancelFlag cancel;             // raised by the receiving thread

  std::unique_ptr<Engine> engine;
  std::vector<Token> cached;  // the tokens whose KV the engine holds
  // Lowest cache position holding imported KV (INT_MAX: none), to count the verifications
  // that attend to handed-over KV.
  int imported_from = INT_MAX;
  SamplingParams sampling;
  WorkLog log;
  KvCounters kv;  // KV handoff counters of this run

  // Sends a message of the current run to the coordinator (thread-safe).
  void reply(Message::Body b, bool defer = false) {
    link.send(0, Message{.run = run, .body = std::move(b)}, defer);
  }

  // When a peer must have answered by.
  Clock::time_point peer_deadline() const {
    return Clock::now() + std::chrono::duration_cast<Clock::duration>(
                              std::chrono::duration<double>(opts.peer_timeout_s));
  }

  // Truncates the engine to the longest cached prefix of `seq`, keeping at least `recompute`
  // tokens to run again (their logits are wanted). Returns how many tokens are kept.
  size_t reuse_prefix(std::span<const Token> seq, size_t recompute) {
    const size_t keep = std::min(common_prefix(cached, seq), seq.size() - recompute);
    truncate(keep);
    return keep;
  }
  // Rolls the engine and `cached` back to n tokens.
  void truncate(size_t n) {
    engine->truncate(static_cast<int>(n));
    cached.resize(n);
    if (static_cast<int>(n) <= imported_from) imported_from = INT_MAX;
  }
};

// Target: runs the verification and replies Result, or Cancelled when it was preempted.
void verify(WorkerContext& ctx, const msg::Verify& m);

// KV handoff source: sends the range (or word that it no longer holds it) to m.dst.
void kv_send(WorkerContext& ctx, const msg::KvSend& m);
// KV handoff destination: imports the range when the cache reaches its begin with the same
// tokens; otherwise leaves it to the next forward to recompute.
void kv_expect(WorkerContext& ctx, const msg::KvExpect& m);

// Drafter: drafts one token at a time along the chain the coordinator last started, until its
// window or stop length. With merged drafters (roles.drafters > 1) the lead drafter (index 0)
// also sends its drafts to the others (Follow); each other drafter follows the lead's chain
// and proposes its own token at each position, after the committed text and the lead's drafts
// before it (Proposals), one forward for all the lead's drafts that arrived meanwhile. Its state is
// guarded by the worker's mutex `mu`, which guards the worker's inbox too, so that an idle thread
// waits for a message or a draft to make at once; the methods marked so expect mu held.
class DrafterRole {
 public:
  DrafterRole(WorkerContext& ctx, std::mutex& mu) : ctx_(ctx), mu_(mu) {}

  // A new run: where the probability vectors go (sampling), the staged drafter's looked-up
  // tokens per forward (0: no stage), no chain yet. mu held.
  void configure(std::vector<int32_t> targets, int stage_tokens = 0, int index = 0,
                 std::vector<int32_t> followers = {});
  // mu held.
  void start(const msg::StartChain& m);
  // mu held: the lead drafter's drafts (a drafter other than the lead); they may come before
  // their chain's StartChain, from another rank.
  void follow(const msg::Follow& m);
  void stop() { active_ = false; }  // mu held: no more drafts this run
  bool can_draft() const {          // mu held
    if (index_ > 0) return active_ && next_ <= seq_.size() && next_ < limit_;
    return active_ && window_ != 0 && static_cast<int>(seq_.size()) < stop_len_;
  }
  bool drafting() const { return drafting_; }  // mu held: a draft forward is running
  // mu held: claims the next draft (drafting() until step() ends).
  void begin_step() { drafting_ = true; }
  // mu not held: one draft forward; replies Draft unless a new chain superseded it. The
  // receiving thread raises ctx.cancel to supersede it.
  void step();

 private:
  // step() of a chain with a token-tree shape: the whole tree, then DraftTree.
  void step_tree(uint64_t chain, const std::vector<Token>& seq, double t0);
  // Before the next tree: the KV of the last tree's nodes that the committed text took.
  void keep_drafted_path(const std::vector<Token>& seq);
  // step() with a prompt-lookup proposal: the drafts one forward checks (staged drafting).
  void step_staged(uint64_t chain, const std::vector<Token>& seq, size_t keep,
                   const std::vector<Token>& proposal, double t0);
  // Sends the drafts of one forward from position pos (mu held; the chain is current).
  void announce(uint64_t chain, int pos, std::span<const Token> drafts, double busy_s);
  // step() of a drafter other than the lead: its tokens at positions from .. |seq|.
  void step_follow(uint64_t chain, std::vector<Token> seq, size_t from, double t0);

  WorkerContext& ctx_;
  std::mutex& mu_;
  std::vector<int32_t> targets_;
  bool drafting_ = false;
  bool active_ = false;
  uint64_t chain_ = 0;
  std::vector<Token> seq_;  // committed sequence + drafts of this chain
  int window_ = -1;
  int stop_len_ = 0;
  size_t chain_base_ = 0;  // the chain's first draft position
  int notify_every_ = 1;
  std::vector<int32_t> tree_;  // the chain's token-tree shape (empty: a chain)
  int stage_tokens_ = 0;       // staged drafting: looked-up tokens per forward (0: none)
  TokenTree last_tree_;        // working thread only: the last tree drafted (its KV kept)
  // Merged drafters.
  int index_ = 0;                   // 0: the lead drafter (or the only one)
  std::vector<int32_t> followers_;  // the lead: the other drafters' ranks
  size_t next_ = 0;                 // a follower: the next position to propose
  size_t limit_ = 0;                // a follower: propose no position >= limit_
  std::vector<msg::Follow> early_;  // a follower: drafts of a chain not started yet
};

}  // namespace dsi
