#include "core/coordinator.h"

#include <fmt/format.h>

#include <set>

#include "core/kv_handoff.h"
#include "engines/synthetic_engine.h"

namespace dsi {

using json = nlohmann::json;

namespace {
double seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

// What the coordinator knows of the target ranks for KV handoff (from their Ready messages).
struct TargetKv {
  bool can = false;          // every target has a data channel and the same KV layout size
  bool shared_device = false;  // two targets compute on the same device
  double bytes_per_token = 0;
};

TargetKv target_kv(const std::map<int, Message>& ready, int first_target) {
  TargetKv t{true, false, -1};
  std::set<std::string> devices;
  for (const auto& [r, m] : ready) {
    if (r < first_target) continue;
    const auto& rd = m.as<msg::Ready>();
    const double bytes = static_cast<double>(rd.kv_bytes_per_token);
    if (t.bytes_per_token < 0) t.bytes_per_token = bytes;
    t.can = t.can && rd.has_data_channel && bytes > 0 && bytes == t.bytes_per_token;
    if (!devices.insert(rd.device).second) t.shared_device = true;
  }
  return t;
}
}  // namespace

std::string role_of_rank(int rank, int n_drafters, int n_targets) {
  if (rank == 0) return "coordinator";
  if (rank <= n_drafters) return n_drafters == 1 ? "drafter" : fmt::format("drafter {}", rank - 1);
  if (rank <= n_drafters + n_targets) return fmt::format("target {}", rank - 1 - n_drafters);
  return "idle";
}

double RunReport::wasted_target_s() const {
  double w = 0;
  for (const auto& r : ranks) w += r.wasted_s;
  return w;
}

Coordinator::Coordinator(ControlChannel& ch, int heartbeat_ms, double peer_timeout_s)
    : ch_(ch),
      heartbeat_(heartbeat_ms),
      timeout_(peer_timeout_s),
      last_heard_(ch.size(), Clock::now()),
      next_hb_(Clock::now()),
      roles_(ch.size(), "worker") {}

std::string Coordinator::name(int rank) const {
  return fmt::format("rank {} ({})", rank, rank < static_cast<int>(roles_.size()) ? roles_[rank] : "?");
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
        throw PeerError(r, fmt::format("{} has not been heard from for {:.1f} s (it died or hangs)",
                                       name(r), seconds(now - last_heard_[r])), true);
      }
    }
    std::optional<Envelope> env;
    try {
      env = ch_.recv(std::min(deadline, next_hb_));
    } catch (const ProtocolError& e) {
      throw PeerError(-1, fmt::format("bad control message: {}", e.what()), false);
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

RunReport Coordinator::run(const RunConfig& cfg, int n_targets,
                           const std::function<void(std::span<const Token>)>& on_commit) {
  ++run_;
  const int n_drafters = cfg.n_drafters();
  if (1 + n_drafters + n_targets > ch_.size()) {
    throw ConfigError(fmt::format("{} targets and {} drafters need {} ranks, the world has {}",
                                  n_targets, n_drafters, 1 + n_drafters + n_targets, ch_.size()));
  }
  for (int r = 0; r < ch_.size(); ++r) roles_[r] = role_of_rank(r, n_drafters, n_targets);
  std::vector<int> workers;
  for (int r = 1; r <= n_drafters + n_targets; ++r) workers.push_back(r);
  const int first_target = 1 + n_drafters;

  RunReport rep;
  rep.cfg = cfg;
  rep.n_targets = n_targets;
  std::shared_ptr<const TextModel> text;
  std::vector<Token> stop_tokens;
  if (cfg.engine == "llama") {
    text = text_model(cfg.model_path);
    rep.prompt = text->prompt_tokens(cfg.prompt, cfg.chat);
    stop_tokens = text->stop_tokens();
    if (rep.prompt.empty()) throw ConfigError("the prompt encodes to no tokens");
  } else {
    rep.prompt = synthetic_prompt(cfg.seed, cfg.prompt_tokens, cfg.vocab);
  }
  const auto origin = Clock::now();
  const double origin_s = std::chrono::duration<double>(origin.time_since_epoch()).count();
  auto stamp = [&] { return seconds(Clock::now() - origin) * 1e6; };

  // Configure every worker.
  for (int r : workers) {
    const bool drafter = r < first_target;
    WorkerSpec spec = worker_spec(cfg, drafter);
    if (drafter) {
      // where the drafter's probability vectors go
      for (int t = 0; t < n_targets; ++t) spec.targets.push_back(first_target + t);
    }
    ch_.send(r, Message{.run = run_, .body = msg::Configure{.origin_s = origin_s, .spec = spec}});
  }
  // Every rank must share one vocabulary: a draft is a token id.
  int vocab_rank = -1, vocab = -1;
  const auto ready = wait_all(workers, MsgType::kReady);
  for (const auto& [r, m] : ready) {
    const int v = m.as<msg::Ready>().vocab;
    if (vocab_rank < 0) {
      vocab_rank = r;
      vocab = v;
    } else if (v != vocab) {
      throw ConfigError(
          fmt::format("the vocabulary of {} ({} tokens) differs from that of {} ({} tokens): "
                      "drafter and target must share one tokenizer",
                      name(r), v, name(vocab_rank), vocab));
    }
  }
  if (text && text->tokenizer().vocab_size() > vocab) {
    throw ConfigError(fmt::format("the tokenizer has {} tokens but the model's output has {}",
                                  text->tokenizer().vocab_size(), vocab));
  }
  // KV handoff between targets: the scheduler plans it from what the targets reported.
  const TargetKv tkv = target_kv(ready, first_target);
  const auto policy = parse_kv_policy(cfg.kv_handoff);
  if (!policy) throw ConfigError(fmt::format("unknown runtime.kv_handoff '{}'", cfg.kv_handoff));
  SchedulerOptions so{.mode = cfg.mode, .lookahead = cfg.lookahead, .n_targets = n_targets,
                      .max_new_tokens = cfg.max_new_tokens, .queue = cfg.queue,
                      .target_choice = cfg.target_choice, .stop_tokens = stop_tokens,
                      .kv = {.policy = *policy, .bytes_per_token = tkv.can ? tkv.bytes_per_token : 0,
                             .gbps = cfg.kv_gbps, .shared_device = tkv.shared_device}};
  Scheduler sched(so, rep.prompt);

  size_t committed = sched.committed().size();
  int64_t rejected = 0;
  auto t_start = Clock::now();
  auto last_commit = t_start;
  auto execute = [&](const std::vector<Action>& acts) {
    for (const Action& a : acts) {
      switch (a.kind) {
        case Action::kPrefill:
          ch_.send(first_target + a.target, Message{.run = run_, .body = msg::Prefill{.tokens = a.seq}});
          break;
        case Action::kStartChain:
          ch_.send(1, Message{.run = run_, .body = msg::StartChain{.chain = a.id, .committed = a.seq,
                                                                   .window = a.window,
                                                                   .stop_len = a.stop_len}});
          break;
        case Action::kVerify:
          ch_.send(first_target + a.target,
                   Message{.run = run_, .body = msg::Verify{.task = a.id, .chain = a.chain,
                                                            .seq = a.seq, .n_logits = a.n_logits,
                                                            .bonus_anchor = a.bonus_anchor,
                                                            .bonus_period = a.bonus_period}});
          break;
        case Action::kCancel:
          ch_.send(first_target + a.target, Message{.run = run_, .body = msg::Cancel{.task = a.id}});
          rep.events.push_back({{"name", "cancel"}, {"ph", "i"}, {"s", "p"}, {"ts", stamp()},
                                {"args", {{"task", a.id}, {"target", a.target}}}});
          break;
        case Action::kKvHandoff:
          ch_.send(first_target + a.target,
                   Message{.run = run_, .body = msg::KvSend{.handoff = a.id, .begin = a.begin, .end = a.end,
                                                            .dst = first_target + a.dst, .tokens = a.seq}});
          ch_.send(first_target + a.dst,
                   Message{.run = run_, .body = msg::KvExpect{.handoff = a.id, .begin = a.begin, .end = a.end,
                                                              .src = first_target + a.target, .tokens = a.seq}});
          ++rep.kv.planned;
          break;
      }
    }
    if (sched.committed().size() != committed) {
      const auto& c = sched.committed();
      if (on_commit) on_commit(std::span(c).subspan(committed));
      rep.events.push_back({{"name", "commit"}, {"ph", "i"}, {"s", "p"}, {"ts", stamp()},
                            {"args", {{"tokens", c.size() - committed}}}});
      committed = c.size();
      last_commit = Clock::now();
    }
    if (sched.stats().drafts_rejected != rejected) {
      rejected = sched.stats().drafts_rejected;
      rep.events.push_back({{"name", "reject"}, {"ph", "i"}, {"s", "p"}, {"ts", stamp()}});
    }
  };

  // Prefill the prompt (all but its last token) on the drafters and, as the scheduler says,
  // on the targets.
  std::vector<Token> prefix(rep.prompt.begin(), rep.prompt.end() - 1);
  for (int r = 1; r < first_target; ++r) ch_.send(r, Message{.run = run_, .body = msg::Prefill{.tokens = prefix}});
  execute(sched.prefill());
  rep.kv.prompt = sched.prompt_handed_over();
  int drafters_left = n_drafters;
  while (drafters_left > 0 || !sched.prefilled()) {
    auto env = next(Clock::now() + heartbeat_);
    if (!env || !env->msg.is<msg::PrefillDone>()) continue;
    if (env->src < first_target) {
      --drafters_left;
    } else {
      execute(sched.on_prefilled(env->src - first_target));
    }
  }
  rep.setup_s = seconds(Clock::now() - origin);

  t_start = Clock::now();
  last_commit = t_start;
  execute(sched.start());
  while (!sched.done()) {
    auto env = next(Clock::now() + heartbeat_);
    if (!env) continue;
    const Message& m = env->msg;
    if (const auto* d = std::get_if<msg::Draft>(&m.body)) {
      execute(sched.on_draft(d->chain, d->pos, d->token));
    } else if (const auto* res = std::get_if<msg::Result>(&m.body)) {
      execute(sched.on_result(res->task, res->tokens, Forward{res->computed, res->busy_s}));
    } else if (const auto* c = std::get_if<msg::Cancelled>(&m.body)) {
      execute(sched.on_cancelled(c->task));
    }
  }
  rep.elapsed_s = seconds(last_commit - t_start);
  rep.tokens.assign(sched.committed().begin() + sched.prompt_len(), sched.committed().end());
  rep.latency_per_token_ms = rep.tokens.empty() ? 0 : rep.elapsed_s * 1e3 / rep.tokens.size();
  if (text) rep.text = text->tokenizer().decode(rep.tokens);
  rep.stats = sched.stats();

  for (int r : workers) ch_.send(r, Message{.run = run_, .body = msg::Stop{}});
  for (auto& [r, m] : wait_all(workers, MsgType::kStopped)) {
    auto& st = m.as<msg::Stopped>();
    rep.ranks.push_back(RankReport{r, roles_[r], st.busy_s, st.wasted_s, std::move(st.spans)});
    rep.kv.imported += st.kv.imported;
    rep.kv.imported_tokens += st.kv.imported_tokens;
    rep.kv.sent_bytes += st.kv.sent_bytes;
    rep.kv.fallbacks += st.kv.fallbacks;
    rep.kv.not_needed += st.kv.not_needed;
    rep.kv.verified_on_imported += st.kv.verified_on_imported;
  }
  return rep;
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

json trace_json(const RunReport& r) {
  json ev = json::array();
  auto meta = [&](int pid, const std::string& name) {
    ev.push_back({{"name", "process_name"}, {"ph", "M"}, {"pid", pid}, {"args", {{"name", name}}}});
    ev.push_back({{"name", "process_sort_index"}, {"ph", "M"}, {"pid", pid}, {"args", {{"sort_index", pid}}}});
  };
  meta(0, "rank 0 (coordinator)");
  for (json e : r.events) {
    e["pid"] = 0;
    e["tid"] = 0;
    ev.push_back(std::move(e));
  }
  for (const auto& rk : r.ranks) {
    meta(rk.rank, fmt::format("rank {} ({})", rk.rank, rk.role));
    for (const Span& sp : rk.spans) {
      json s = span_trace_event(sp);
      s["ph"] = "X";
      s["pid"] = rk.rank;
      s["tid"] = 0;
      ev.push_back(std::move(s));
    }
  }
  return json{{"traceEvents", ev}, {"displayTimeUnit", "ms"}};
}

json summary_json(const RunReport& r) {
  json ranks = json::array();
  for (const auto& rk : r.ranks) {
    ranks.push_back({{"rank", rk.rank}, {"role", rk.role}, {"busy_s", rk.busy_s}, {"wasted_s", rk.wasted_s}});
  }
  const auto& s = r.stats;
  return {
      {"mode", mode_name(r.cfg.mode)},
      {"sp", r.n_targets},
      {"lookahead", r.cfg.lookahead},
      {"engine", r.cfg.engine},
      {"temperature", r.cfg.temperature},
      {"prompt_ids", r.prompt},
      {"generated_ids", r.tokens},
      {"text", r.text},
      {"tokens", r.tokens.size()},
      {"setup_s", r.setup_s},
      {"elapsed_s", r.elapsed_s},
      {"latency_per_token_ms", r.latency_per_token_ms},
      {"acceptance_rate", r.acceptance_rate()},
      {"chains", s.chains},
      {"drafts", {{"received", s.drafts_received}, {"accepted", s.drafts_accepted}, {"rejected", s.drafts_rejected}}},
      {"tasks", {{"launched", s.tasks_launched}, {"completed", s.tasks_completed},
                 {"preempted", s.tasks_preempted}, {"cancelled_queued", s.tasks_cancelled_queued}}},
      {"wasted_target_s", r.wasted_target_s()},
      {"kv_handoff", {{"mode", r.cfg.kv_handoff}, {"prompt", r.kv.prompt}, {"planned", r.kv.planned},
                      {"imported", r.kv.imported}, {"imported_tokens", r.kv.imported_tokens},
                      {"sent_bytes", r.kv.sent_bytes}, {"fallbacks", r.kv.fallbacks},
                      {"not_needed", r.kv.not_needed},
                      {"verified_on_imported", r.kv.verified_on_imported}}},
      {"ranks", ranks},
  };
}

std::string summary_text(const RunReport& r) {
  const auto& s = r.stats;
  std::string out = fmt::format(
      "mode {}  SP {}  k {}  engine {}  temperature {}\n"
      "tokens {}  latency/token {:.3f} ms  elapsed {:.3f} s  (setup {:.3f} s not counted)\n"
      "acceptance rate {:.3f}  ({} drafts accepted, {} rejected, {} chains)\n"
      "tasks: launched {}  completed {}  preempted {}  cancelled while queued {}\n"
      "wasted (preempted) target time {:.3f} s\n",
      mode_name(r.cfg.mode), r.n_targets, r.cfg.lookahead, r.cfg.engine, r.cfg.temperature, r.tokens.size(),
      r.latency_per_token_ms, r.elapsed_s, r.setup_s, r.acceptance_rate(), s.drafts_accepted,
      s.drafts_rejected, s.chains, s.tasks_launched, s.tasks_completed, s.tasks_preempted,
      s.tasks_cancelled_queued, r.wasted_target_s());
  if (r.kv.planned > 0) {
    out += fmt::format(
        "kv handoff: {} planned{}, {} imported ({} tokens, {:.2f} MB), {} fell back to "
        "recomputing, {} not needed; {} verifications attended to imported KV\n",
        r.kv.planned, r.kv.prompt ? " (prompt included)" : "", r.kv.imported, r.kv.imported_tokens,
        r.kv.sent_bytes / 1e6, r.kv.fallbacks, r.kv.not_needed, r.kv.verified_on_imported);
  }
  for (const auto& rk : r.ranks) {
    out += fmt::format("  rank {:3} {:12} busy {:8.3f} s ({:5.1f}%)  wasted {:.3f} s\n", rk.rank,
                       rk.role, rk.busy_s, r.elapsed_s > 0 ? 100 * rk.busy_s / (r.elapsed_s + r.setup_s) : 0,
                       rk.wasted_s);
  }
  return out;
}

}  // namespace dsi
