#include "core/coordinator.h"

#include <fmt/format.h>

#include <algorithm>
#include <set>

#include "core/kv_handoff.h"
#include "engines/synthetic_engine.h"

namespace dsi {

using json = nlohmann::json;

namespace {
double seconds(Clock::duration d) {
  return std::chrono::duration<double>(d).count();
}

// What the targets' Ready messages say about KV handoff between them.
KvHandoffOptions kv_options(const RunConfig& cfg, const std::map<int, Message>& ready,
                            int first_target) {
  const auto policy = parse_kv_policy(cfg.kv_handoff);
  if (!policy) {
    throw ConfigError(fmt::format("runtime.kv_handoff must be one of auto, always, never, got '{}'",
                                  cfg.kv_handoff));
  }
  // Handoff needs every target to have a data channel and the same KV layout size.
  bool can = true;
  double bytes_per_token = -1;
  bool shared_device = false;  // two targets compute on the same device
  std::set<std::string> devices;
  for (const auto& [r, m] : ready) {
    if (r < first_target) continue;
    const auto& rd = m.as<msg::Ready>();
    const double bytes = static_cast<double>(rd.kv_bytes_per_token);
    if (bytes_per_token < 0) bytes_per_token = bytes;
    can = can && rd.has_data_channel && bytes > 0 && bytes == bytes_per_token;
    if (!devices.insert(rd.device).second) shared_device = true;
  }
  return KvHandoffOptions{.policy = *policy,
                          .bytes_per_token = can ? bytes_per_token : 0,
                          .gbps = cfg.kv_gbps,
                          .shared_device = shared_device};
}
}  // namespace

// One run: its layout, the scheduler, and the report it fills.
struct Coordinator::Run {
  int n_drafters = 0;
  int first_target = 0;  // rank of target 0
  std::vector<int> workers;
  std::shared_ptr<const TextModel> text;  // real models
  OnCommit on_commit;
  Clock::time_point origin;  // configure; spans and events are timed from it
  std::unique_ptr<Scheduler> sched;
  std::unique_ptr<Adapter> adapt;  // runtime.adapt: the scheduler's planner
  RunReport rep;
  // Generation: progress seen so far, for on_commit and the trace events.
  Clock::time_point t_start, last_commit;
  size_t committed = 0;  // the prompt, then what on_commit has seen
  int64_t rejected = 0;
  // Merged drafters: when the current chain started, and how long SI waits for the other
  // drafters' proposals once its window is drafted.
  Clock::time_point chain_started;
  std::optional<Clock::time_point> proposals_due;

  int rank(int target) const { return first_target + target; }
  double stamp_us() const { return seconds(Clock::now() - origin) * 1e6; }
  void event(const char* name, json args = nullptr) {
    json e = {{"name", name}, {"ph", "i"}, {"s", "p"}, {"ts", stamp_us()}};
    if (!args.is_null()) e["args"] = std::move(args);
    rep.events.push_back(std::move(e));
  }
};

std::string role_of_rank(int rank, int n_drafters, int first_target, int n_targets) {
  if (rank == 0) return "coordinator";
  if (rank <= n_drafters) return n_drafters == 1 ? "drafter" : fmt::format("drafter {}", rank - 1);
  if (rank >= first_target && rank < first_target + n_targets) {
    return fmt::format("target {}", rank - first_target);
  }
  return "idle";
}

Coordinator::Coordinator(ControlChannel& ch, int heartbeat_ms, double peer_timeout_s)
    : ch_(ch),
      heartbeat_(heartbeat_ms),
      timeout_(peer_timeout_s),
      last_heard_(ch.size(), Clock::now()),
      next_hb_(Clock::now()),
      roles_(ch.size(), "worker") {}

int Coordinator::world_rank(int rank) const {
  return rank >= 0 && rank < static_cast<int>(world_.size()) ? world_[rank] : rank;
}

std::string Coordinator::role_in_world(int rank) const {
  std::string role = rank >= 0 && rank < static_cast<int>(roles_.size()) ? roles_[rank] : "?";
  const int n = rank >= 0 && rank < static_cast<int>(group_size_.size()) ? group_size_[rank] : 1;
  if (n > 1) {
    role += fmt::format(", world ranks {}-{}", world_rank(rank), world_rank(rank) + n - 1);
  }
  return role;
}

std::string Coordinator::name(int rank) const {
  return fmt::format("rank {} ({})", world_rank(rank), role_in_world(rank));
}

std::optional<Envelope> Coordinator::next(Clock::time_point deadline) {
  for (;;) {
    auto now = Clock::now();
    if (now >= next_hb_) {
      for (int r = 1; r < ch_.size(); ++r)
        ch_.send(r, Message{.run = run_, .body = msg::Heartbeat{}});
      next_hb_ = now + heartbeat_;
    }
    for (int r = 1; r < ch_.size(); ++r) {
      if (now - last_heard_[r] > timeout_) {
        throw PeerError(r,
                        fmt::format("{} has not been heard from for {:.1f} s (it died or hangs)",
                                    name(r), seconds(now - last_heard_[r])),
                        true);
      }
    }
    std::optional<Envelope> env;
    try {
      env = ch_.recv(std::min(deadline, next_hb_));
    } catch (const ProtocolError& e) {
      throw PeerError(-1, fmt::format("bad control message: {}", error_message(e)), false);
    }
    if (!env) {
      if (Clock::now() >= deadline) return std::nullopt;
      continue;
    }
    last_heard_[env->src] = Clock::now();
    if (env->msg.is<msg::Heartbeat>()) continue;
    if (const auto* e = std::get_if<msg::Error>(&env->msg.body)) {
      throw PeerError(env->src, fmt::format("{}: {}", name(env->src), e->what), false);
    }
    if (env->msg.run != run_) continue;  // a straggler from an earlier run
    return env;
  }
}

void Coordinator::idle(Clock::time_point until) {
  do {
    (void)next(until);  // anything left over from a finished run is dropped
  } while (Clock::now() < until);
}

RunReport Coordinator::run(const RunConfig& cfg, int n_targets, const OnCommit& on_commit,
                           const CancelFlag* stop) {
  auto r = configure(cfg, n_targets, on_commit);
  prefill(*r);
  generate(*r, stop);
  return finish(*r);
}

std::unique_ptr<Coordinator::Run> Coordinator::configure(const RunConfig& cfg, int n_targets,
                                                         const OnCommit& on_commit) {
  check_adapt(cfg);
  check_tree_config(cfg);
  check_drafters_config(cfg);
  ++run_;
  auto run = std::make_unique<Run>();
  Run& r = *run;
  r.on_commit = on_commit;
  r.n_drafters = cfg.n_drafters();
  // Drafter ranks the world keeps (tensor-parallel layouts) stay idle in runs without them.
  r.first_target = 1 + std::max(r.n_drafters, reserved_drafters_);
  if (r.n_drafters > reserved_drafters_ && reserved_drafters_ > 0) {
    throw ConfigError(fmt::format("{} drafters asked for, the world's layout has {}", r.n_drafters,
                                  reserved_drafters_));
  }
  if (r.first_target + n_targets > ch_.size()) {
    throw ConfigError(fmt::format("{} targets and {} drafters need {} ranks, the world has {}",
                                  n_targets, r.n_drafters, r.first_target + n_targets, ch_.size()));
  }
  for (int k = 0; k < ch_.size(); ++k) {
    roles_[k] = role_of_rank(k, r.n_drafters, r.first_target, n_targets);
  }
  for (int k = 1; k <= r.n_drafters; ++k) r.workers.push_back(k);
  for (int k = r.first_target; k < r.first_target + n_targets; ++k) r.workers.push_back(k);
  r.rep.cfg = cfg;
  r.rep.n_targets = n_targets;
  std::vector<Token> stop_tokens;
  if (cfg.engine == "llama") {
    r.text = text_model(cfg.model_path);
    r.rep.prompt =
        cfg.prompt_ids.empty() ? r.text->prompt_tokens(cfg.prompt, cfg.chat) : cfg.prompt_ids;
    stop_tokens = r.text->stop_tokens();
    if (r.rep.prompt.empty()) throw ConfigError("the prompt encodes to no tokens");
  } else {
    r.rep.prompt = cfg.prompt_ids.empty() ? synthetic_prompt(cfg.seed, cfg.prompt_tokens, cfg.vocab)
                                          : cfg.prompt_ids;
  }
  r.origin = Clock::now();
  const double origin_s = std::chrono::duration<double>(r.origin.time_since_epoch()).count();

  for (int w : r.workers) {
    const bool drafter = w <= r.n_drafters;
    WorkerSpec spec = worker_spec(cfg, drafter, drafter ? w - 1 : 0);
    if (drafter) {
      // where the drafter's probability vectors go
      for (int t = 0; t < n_targets; ++t) spec.targets.push_back(r.rank(t));
    }
    // Merged drafters: the lead's drafts go to the others too.
    if (w == 1) {
      for (int f = 2; f <= r.n_drafters; ++f) spec.followers.push_back(f);
    }
    ch_.send(w, Message{.run = run_, .body = msg::Configure{.origin_s = origin_s, .spec = spec}});
  }
  const auto ready = wait_all(r.workers, MsgType::kReady);
  const int vocab = check_vocabulary(ready, r.text.get());
  for (Token t : r.rep.prompt) {
    if (t < 0 || t >= vocab) {
      throw ConfigError(fmt::format("prompt token {} is outside the vocabulary of {}", t, vocab));
    }
  }
  SchedulerOptions so{.mode = cfg.mode,
                      .lookahead = cfg.lookahead,
                      .n_targets = n_targets,
                      .max_new_tokens = cfg.max_new_tokens,
                      .queue = cfg.queue,
                      .target_choice = cfg.target_choice,
                      .stop_tokens = stop_tokens,
                      .kv = kv_options(cfg, ready, r.first_target),
                      .tree = cfg.tree,
                      .followers = std::max(0, r.n_drafters - 1)};
  r.sched = std::make_unique<Scheduler>(so, r.rep.prompt);
  r.committed = r.sched->committed().size();
  if (cfg.adapt && cfg.mode != Mode::kNonSi) {
    r.adapt = std::make_unique<Adapter>(
        AdaptOptions{.n_targets = n_targets, .max_k = std::max(8, cfg.lookahead)},
        ChainPlan{.mode = cfg.mode, .lookahead = cfg.lookahead, .sp = n_targets});
    r.sched->set_planner([&r] {
      Adapter& a = *r.adapt;
      const size_t before = a.decisions().size();
      a.checked(r.sched->stats());
      const ChainPlan p = a.plan(seconds(Clock::now() - r.t_start), r.sched->generated());
      if (a.decisions().size() != before) r.event("plan", adapt_json(a.decisions().back()));
      return p;
    });
  }
  return run;
}

int Coordinator::check_vocabulary(const std::map<int, Message>& ready,
                                  const TextModel* text) const {
  // Every rank must share one vocabulary: a draft is a token id.
  int vocab_rank = -1, vocab = -1;
  for (const auto& [w, m] : ready) {
    const int v = m.as<msg::Ready>().vocab;
    if (vocab_rank < 0) {
      vocab_rank = w;
      vocab = v;
    } else if (v != vocab) {
      throw ConfigError(
          fmt::format("the vocabulary of {} ({} tokens) differs from that of {} ({} tokens): "
                      "drafter and target must share one tokenizer",
                      name(w), v, name(vocab_rank), vocab));
    }
  }
  if (text && text->tokenizer().vocab_size() > vocab) {
    throw ConfigError(fmt::format("the tokenizer has {} tokens but the model's output has {}",
                                  text->tokenizer().vocab_size(), vocab));
  }
  return vocab;
}

void Coordinator::prefill(Run& r) {
  // The prompt but its last token: the drafters compute it, the targets as the scheduler
  // says (each its own, or target 0's handed over to the others).
  const std::vector<Token> prefix(r.rep.prompt.begin(), r.rep.prompt.end() - 1);
  std::set<int> pending;  // drafter ranks still prefilling
  for (int w = 1; w <= r.n_drafters; ++w) {
    ch_.send(w, Message{.run = run_, .body = msg::Prefill{.tokens = prefix}});
    pending.insert(w);
  }
  execute(r, r.sched->prefill());
  while (!pending.empty() || !r.sched->prefilled()) {
    auto env = next(Clock::now() + heartbeat_);
    if (!env || !env->msg.is<msg::PrefillDone>()) continue;
    if (env->src <= r.n_drafters) {
      pending.erase(env->src);
    } else {
      execute(r, r.sched->on_prefilled(env->src - r.first_target));
    }
  }
  r.rep.kv.prompt = r.sched->prompt_handed_over();
  r.rep.setup_s = seconds(Clock::now() - r.origin);
}

void Coordinator::generate(Run& r, const CancelFlag* stop) {
  Scheduler& sched = *r.sched;
  r.t_start = r.last_commit = Clock::now();
  execute(r, sched.start());
  while (!sched.done()) {
    if (stop && stop->cancelled()) {
      r.rep.stopped = true;
      break;
    }
    // Drafts that do not launch a verification are deferred (they do not wake this rank):
    // poll for them while one would be acted on at once.
    constexpr auto kDraftPoll = std::chrono::microseconds(20);
    auto deadline = Clock::now() + (sched.awaits_drafts() ? kDraftPoll : heartbeat_);
    if (sched.awaits_proposals()) {
      // SI with merged drafters: the window is drafted; wait for the other drafters'
      // proposals at most half as long as the window took (a slow or silent drafter costs
      // that, never a token).
      const auto now = Clock::now();
      if (!r.proposals_due) {
        r.proposals_due = now + std::max<Clock::duration>(std::chrono::microseconds(200),
                                                          (now - r.chain_started) / 2);
      }
      if (now >= *r.proposals_due) {
        ++r.rep.proposal_waits_given_up;
        r.proposals_due.reset();
        execute(r, sched.stop_waiting());
        continue;
      }
      deadline = std::min(deadline, *r.proposals_due);
    } else {
      r.proposals_due.reset();
    }
    auto env = next(deadline);
    if (!env) continue;
    const Message& m = env->msg;
    if (const auto* d = std::get_if<msg::Draft>(&m.body)) {
      if (r.adapt) r.adapt->draft(d->busy_s);
      execute(r, sched.on_draft(d->chain, d->pos, d->token));
    } else if (const auto* p = std::get_if<msg::Proposals>(&m.body)) {
      if (env->src >= 2 && env->src <= r.n_drafters) {
        execute(r, sched.on_proposals(env->src - 2, p->chain, p->pos, p->tokens));
      }
    } else if (const auto* dt = std::get_if<msg::DraftTree>(&m.body)) {
      execute(r, sched.on_draft_tree(dt->chain, dt->pos, TokenTree{dt->tokens, dt->parents}));
    } else if (const auto* res = std::get_if<msg::Result>(&m.body)) {
      if (r.adapt) r.adapt->forward(res->computed, res->busy_s);
      execute(r, sched.on_result(res->task, res->tokens, Forward{res->computed, res->busy_s}));
      if (r.adapt) execute(r, sched.checkpoint());
    } else if (const auto* c = std::get_if<msg::Cancelled>(&m.body)) {
      execute(r, sched.on_cancelled(c->task));
    }
  }
}

void Coordinator::execute(Run& r, const std::vector<Action>& acts) {
  // After a rejection the new chain goes out first and the cancels of the stale verifications
  // last: the drafter's restart and the new verifications are the critical path, and each send
  // that rings costs a system call. A cancel goes to a busy target and every other action to
  // the drafter or an idle one, so the order that matters (among the rest) is kept.
  auto rank = [](const Action* a) {
    return a->kind == Action::kStartChain ? 0 : a->kind == Action::kCancel ? 2 : 1;
  };
  std::vector<const Action*> order;
  for (const Action& a : acts) order.push_back(&a);
  std::stable_sort(order.begin(), order.end(),
                   [&](const Action* x, const Action* y) { return rank(x) < rank(y); });
  for (const Action* ap : order) {
    const Action& a = *ap;
    switch (a.kind) {
      case Action::kPrefill:
        ch_.send(r.rank(a.target), Message{.run = run_, .body = msg::Prefill{.tokens = a.seq}});
        break;
      case Action::kStartChain:
        // Every drafter: the lead drafts the chain, the others propose along it.
        for (int d = 1; d <= r.n_drafters; ++d) {
          ch_.send(d, Message{.run = run_,
                              .body = msg::StartChain{.chain = a.id,
                                                      .committed = a.seq,
                                                      .window = a.window,
                                                      .stop_len = a.stop_len,
                                                      .notify_every = a.notify_every,
                                                      .tree = a.tree}});
        }
        r.chain_started = Clock::now();
        break;
      case Action::kVerify:
        ch_.send(r.rank(a.target), Message{.run = run_,
                                           .body = msg::Verify{.task = a.id,
                                                               .chain = a.chain,
                                                               .seq = a.seq,
                                                               .n_logits = a.n_logits,
                                                               .bonus_anchor = a.bonus_anchor,
                                                               .bonus_period = a.bonus_period,
                                                               .parents = a.parents}});
        break;
      case Action::kCancel:
        ch_.send(r.rank(a.target), Message{.run = run_, .body = msg::Cancel{.task = a.id}});
        r.event("cancel", {{"task", a.id}, {"target", a.target}});
        break;
      case Action::kKvHandoff:
        // The source's KvSend goes first: the destination may wait for it (docs/design.md).
        ch_.send(r.rank(a.target), Message{.run = run_,
                                           .body = msg::KvSend{.handoff = a.id,
                                                               .begin = a.begin,
                                                               .end = a.end,
                                                               .dst = r.rank(a.dst),
                                                               .tokens = a.seq}});
        ch_.send(r.rank(a.dst), Message{.run = run_,
                                        .body = msg::KvExpect{.handoff = a.id,
                                                              .begin = a.begin,
                                                              .end = a.end,
                                                              .src = r.rank(a.target),
                                                              .tokens = a.seq}});
        ++r.rep.kv.planned;
        break;
    }
  }
  const auto& c = r.sched->committed();
  if (c.size() != r.committed) {
    if (r.on_commit) r.on_commit(std::span(c).subspan(r.committed));
    r.event("commit", {{"tokens", c.size() - r.committed}});
    r.committed = c.size();
    r.last_commit = Clock::now();
  }
  if (r.sched->stats().drafts_rejected != r.rejected) {
    r.rejected = r.sched->stats().drafts_rejected;
    r.event("reject");
  }
}

RunReport Coordinator::finish(Run& r) {
  const Scheduler& sched = *r.sched;
  RunReport& rep = r.rep;
  rep.elapsed_s = seconds(r.last_commit - r.t_start);
  rep.tokens.assign(sched.committed().begin() + sched.prompt_len(), sched.committed().end());
  rep.latency_per_token_ms = rep.tokens.empty() ? 0 : rep.elapsed_s * 1e3 / rep.tokens.size();
  if (r.text) rep.text = r.text->tokenizer().decode(rep.tokens);
  rep.stats = sched.stats();
  if (r.adapt) {
    r.adapt->checked(sched.stats());
    r.adapt->finish(seconds(r.last_commit - r.t_start), sched.generated());
    rep.adapt = r.adapt->decisions();
    rep.tokens_by_mode = r.adapt->tokens_by_mode();
    rep.adapt_final = r.adapt->estimates();
  }

  for (int w : r.workers) ch_.send(w, Message{.run = run_, .body = msg::Stop{}});
  for (auto& [w, m] : wait_all(r.workers, MsgType::kStopped)) {
    auto& st = m.as<msg::Stopped>();
    rep.ranks.push_back(
        RankReport{world_rank(w), role_in_world(w), st.busy_s, st.wasted_s, std::move(st.spans)});
    rep.kv.imported += st.kv.imported;
    rep.kv.imported_tokens += st.kv.imported_tokens;
    rep.kv.sent_bytes += st.kv.sent_bytes;
    rep.kv.fallbacks += st.kv.fallbacks;
    rep.kv.not_needed += st.kv.not_needed;
    rep.kv.verified_on_imported += st.kv.verified_on_imported;
  }
  return std::move(rep);
}

std::map<int, Message> Coordinator::wait_all(const std::vector<int>& ranks, MsgType type) {
  std::map<int, Message> got;
  while (got.size() < ranks.size()) {
    auto env = next(Clock::now() + heartbeat_);
    // Anything else now (a late result of a cancelled task) is of no use.
    if (env && env->msg.type() == type) got.emplace(env->src, std::move(env->msg));
  }
  return got;
}

std::shared_ptr<const TextModel> Coordinator::text_model(const std::string& path) {
  auto& m = text_models_[path];
  if (!m) m = TextModel::load(path);
  return m;
}

void Coordinator::exit_all(int code) {
  for (int r = 1; r < ch_.size(); ++r) ch_.send(r, Message{.body = msg::Exit{.code = code}});
}

}  // namespace dsi
