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
    if (t.bytes_per_token < 0) t.bytes_per_token = m.x;
    t.can = t.can && m.b == 1 && m.x > 0 && m.x == t.bytes_per_token;
    if (!devices.insert(m.text).second) t.shared_device = true;
  }
  return t;
}
}  // namespace

json worker_spec(const RunConfig& cfg, bool drafter) {
  json spec = {{"engine", cfg.engine}, {"role", drafter ? "drafter" : "target"},
               {"seed", cfg.seed}, {"vocab", cfg.vocab}};
  if (cfg.temperature > 0) {
    spec["sampling"] = {{"temperature", cfg.temperature}, {"top_k", cfg.top_k},
                        {"top_p", cfg.top_p},
                        {"seed", cfg.sampling_seed >= 0 ? static_cast<uint64_t>(cfg.sampling_seed) : cfg.seed}};
  }
  if (cfg.engine == "llama") {
    spec.update({{"model", drafter && !cfg.drafter_model_path.empty() ? cfg.drafter_model_path : cfg.model_path},
                 {"threads", cfg.threads}, {"max_context", cfg.max_context},
                 {"device", drafter ? cfg.drafter_device : cfg.device}});
    if (drafter) spec["layers"] = cfg.drafter_layers;
    if (spec["device"] == "cuda") spec["dtype"] = cfg.dtype;
  } else if (drafter) {
    spec.update({{"ttft_ms", cfg.c * cfg.ttft_ms}, {"forward_ms", cfg.c * cfg.t_ms},
                 {"acceptance", cfg.a}, {"overlap", cfg.overlap}});
  } else {
    spec.update({{"ttft_ms", cfg.ttft_ms}, {"forward_ms", cfg.t_ms},
                 {"per_token_ms", cfg.per_token_ms}});
  }
  return spec;
}

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
      for (int r = 1; r < ch_.size(); ++r) ch_.send(r, Message{.type = MsgType::kHeartbeat, .run = run_});
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
    if (env->msg.type == MsgType::kHeartbeat) continue;
    if (env->msg.type == MsgType::kError) {
      throw PeerError(env->src, fmt::format("{}: {}", name(env->src), env->msg.text), false);
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
    json spec = worker_spec(cfg, drafter);
    if (drafter) {
      std::vector<int> targets;  // where the drafter's probability vectors go
      for (int t = 0; t < n_targets; ++t) targets.push_back(first_target + t);
      spec["targets"] = targets;
    }
    ch_.send(r, Message{.type = MsgType::kConfigure, .run = run_, .x = origin_s, .text = spec.dump()});
  }
  // Every rank must share one vocabulary: a draft is a token id.
  int vocab_rank = -1, vocab = -1;
  const auto ready = wait_all(workers, MsgType::kReady);
  for (const auto& [r, m] : ready) {
    if (vocab_rank < 0) {
      vocab_rank = r;
      vocab = m.a;
    } else if (m.a != vocab) {
      throw ConfigError(fmt::format("the vocabulary of {} ({} tokens) differs from that of {} ({} tokens): "
                                    "drafter and target must share one tokenizer",
                                    name(r), m.a, name(vocab_rank), vocab));
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
          ch_.send(first_target + a.target, Message{.type = MsgType::kPrefill, .run = run_, .tokens = a.seq});
          break;
        case Action::kStartChain:
          ch_.send(1, Message{.type = MsgType::kStartChain, .run = run_, .id = a.id,
                              .a = a.window, .b = a.stop_len, .tokens = a.seq});
          break;
        case Action::kVerify:
          ch_.send(first_target + a.target,
                   Message{.type = MsgType::kVerify, .run = run_, .id = a.id, .a = a.n_logits,
                           .b = a.bonus_anchor, .c = a.bonus_period, .aux = a.chain, .tokens = a.seq});
          break;
        case Action::kCancel:
          ch_.send(first_target + a.target,
                   Message{.type = MsgType::kCancel, .run = run_, .id = a.id});
          rep.events.push_back({{"name", "cancel"}, {"ph", "i"}, {"s", "p"}, {"ts", stamp()},
                                {"args", {{"task", a.id}, {"target", a.target}}}});
          break;
        case Action::kKvHandoff:
          ch_.send(first_target + a.target, Message{.type = MsgType::kKvSend, .run = run_, .id = a.id, .a = a.begin,
                                                    .b = a.end, .c = first_target + a.dst, .tokens = a.seq});
          ch_.send(first_target + a.dst, Message{.type = MsgType::kKvExpect, .run = run_, .id = a.id, .a = a.begin,
                                                 .b = a.end, .c = first_target + a.target, .tokens = a.seq});
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
  for (int r = 1; r < first_target; ++r) ch_.send(r, Message{.type = MsgType::kPrefill, .run = run_, .tokens = prefix});
  execute(sched.prefill());
  rep.kv.prompt = sched.prompt_handed_over();
  int drafters_left = n_drafters;
  while (drafters_left > 0 || !sched.prefilled()) {
    auto env = next(Clock::now() + heartbeat_);
    if (!env || env->msg.type != MsgType::kPrefillDone) continue;
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
    switch (m.type) {
      case MsgType::kDraft: execute(sched.on_draft(m.id, m.a, m.b)); break;
      case MsgType::kResult: execute(sched.on_result(m.id, m.tokens, Forward{m.a, m.x})); break;
      case MsgType::kCancelled: execute(sched.on_cancelled(m.id)); break;
      default: break;
    }
  }
  rep.elapsed_s = seconds(last_commit - t_start);
  rep.tokens.assign(sched.committed().begin() + sched.prompt_len(), sched.committed().end());
  rep.latency_per_token_ms = rep.tokens.empty() ? 0 : rep.elapsed_s * 1e3 / rep.tokens.size();
  if (text) rep.text = text->tokenizer().decode(rep.tokens);
  rep.stats = sched.stats();

  for (int r : workers) ch_.send(r, Message{.type = MsgType::kStop, .run = run_});
  for (auto& [r, m] : wait_all(workers, MsgType::kStopped)) {
    json j = json::parse(m.text);
    rep.ranks.push_back(RankReport{r, roles_[r], j.at("busy_s").get<double>(),
                                   j.at("wasted_s").get<double>(), j.at("spans")});
    const json& kv = j.at("kv");
    rep.kv.imported += kv.at("imported").get<int64_t>();
    rep.kv.imported_tokens += kv.at("imported_tokens").get<int64_t>();
    rep.kv.sent_bytes += kv.at("sent_bytes").get<int64_t>();
    rep.kv.fallbacks += kv.at("fallbacks").get<int64_t>();
    rep.kv.not_needed += kv.at("not_needed").get<int64_t>();
    rep.kv.verified_on_imported += kv.at("verified_on_imported").get<int64_t>();
  }
  return rep;
}

std::map<int, Message> Coordinator::wait_all(const std::vector<int>& ranks, MsgType type) {
  std::map<int, Message> got;
  while (got.size() < ranks.size()) {
    auto env = next(Clock::now() + heartbeat_);
    // Anything else now (a late result of a cancelled task) is of no use.
    if (env && env->msg.type == type) got.emplace(env->src, std::move(env->msg));
  }
  return got;
}

std::shared_ptr<const TextModel> Coordinator::text_model(const std::string& path) {
  auto& m = text_models_[path];
  if (!m) m = TextModel::load(path);
  return m;
}

void Coordinator::exit_all(int code) {
  for (int r = 1; r < ch_.size(); ++r) ch_.send(r, Message{.type = MsgType::kExit, .a = code});
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
    for (json s : rk.spans) {
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
