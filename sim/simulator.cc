#include "sim/simulator.h"

#include <algorithm>
#include <functional>
#include <map>
#include <queue>
#include <random>
#include <stdexcept>

namespace dsi {
namespace {

uint64_t hash_of(uint64_t seed, const std::vector<Token>& seq, size_t n) {
  uint64_t h = synthetic::start_hash(seed);
  for (size_t i = 0; i < n; ++i) h = synthetic::extend_hash(h, seq[i]);
  return h;
}

struct Event {
  double time;
  uint64_t order;  // FIFO among equal times, so runs are deterministic
  std::function<void()> fire;
  bool operator>(const Event& o) const {
    return time != o.time ? time > o.time : order > o.order;
  }
};

// The i.i.d. model's target token at position p: independent of the context, so a task's
// predictions after a wrong draft are still well defined (and ignored by the scheduler).
Token iid_target(uint64_t seed, size_t p, int vocab) {
  return synthetic::target_next(seed, synthetic::extend_hash(synthetic::start_hash(seed),
                                                             static_cast<Token>(p)), vocab);
}

}  // namespace

std::vector<Token> simulated_reference(const SimConfig& cfg) {
  if (cfg.model == TokenModel::kSynthetic) {
    return synthetic_reference(cfg.target, cfg.prompt, cfg.sched.max_new_tokens,
                               cfg.sched.stop_tokens);
  }
  std::vector<Token> out;
  for (int i = 0; i < cfg.sched.max_new_tokens; ++i) {
    const Token t = iid_target(cfg.target.seed, cfg.prompt.size() + i, cfg.target.vocab);
    out.push_back(t);
    const auto& stop = cfg.sched.stop_tokens;
    if (std::find(stop.begin(), stop.end(), t) != stop.end()) break;
  }
  return out;
}

std::vector<Token> synthetic_reference(const SyntheticParams& target,
                                       const std::vector<Token>& prompt, int max_new_tokens,
                                       const std::vector<Token>& stop_tokens) {
  std::vector<Token> out;
  uint64_t h = hash_of(target.seed, prompt, prompt.size());
  for (int i = 0; i < max_new_tokens; ++i) {
    const Token t = synthetic::target_next(target.seed, h, target.vocab);
    out.push_back(t);
    if (std::find(stop_tokens.begin(), stop_tokens.end(), t) != stop_tokens.end()) break;
    h = synthetic::extend_hash(h, t);
  }
  return out;
}

std::vector<float> synthetic_probs(const SyntheticParams& model, const std::vector<Token>& context,
                                   const SamplingParams& sp) {
  std::vector<float> logits(model.vocab);
  synthetic::logits(model, hash_of(model.seed, context, context.size()), logits.data());
  return sampling_probs(logits, sp);
}

std::vector<Token> synthetic_sampled_reference(const SyntheticParams& target,
                                               const std::vector<Token>& prompt,
                                               int max_new_tokens, const SamplingParams& sp) {
  std::vector<Token> ctx = prompt;
  for (int i = 0; i < max_new_tokens; ++i) {
    // Non-SI is verification with no drafts: every position is the target's own sample.
    const auto p = synthetic_probs(target, ctx, sp);
    const Token t = verify_sampled(ctx, static_cast<int>(ctx.size()),
                                   [&](int) { return std::span<const float>(p); }, nullptr,
                                   BonusRule{}, sp)[0];
    ctx.push_back(t);
  }
  return std::vector<Token>(ctx.begin() + prompt.size(), ctx.end());
}

SimConfig sim_config(const RunConfig& cfg, int sp) {
  SimConfig sc;
  sc.sched = {.mode = cfg.mode, .lookahead = cfg.lookahead, .n_targets = sp,
              .max_new_tokens = cfg.max_new_tokens, .queue = cfg.queue,
              .target_choice = cfg.target_choice};
  sc.target = {.seed = cfg.seed, .vocab = cfg.vocab, .forward_ms = cfg.t_ms,
               .per_token_ms = cfg.per_token_ms};
  sc.drafter = {.seed = cfg.seed, .vocab = cfg.vocab, .acceptance = cfg.a,
                .forward_ms = cfg.c * cfg.t_ms, .drafter = true, .overlap = cfg.overlap};
  sc.prompt = synthetic_prompt(cfg.seed, cfg.prompt_tokens, cfg.vocab);
  sc.sampling = {.temperature = static_cast<float>(cfg.temperature), .top_k = cfg.top_k,
                 .top_p = static_cast<float>(cfg.top_p),
                 .seed = cfg.sampling_seed >= 0 ? static_cast<uint64_t>(cfg.sampling_seed) : cfg.seed};
  return sc;
}

SimResult simulate(const SimConfig& cfg) {
  Scheduler sched(cfg.sched, cfg.prompt);
  std::priority_queue<Event, std::vector<Event>, std::greater<>> events;
  uint64_t order = 0;
  double now = 0;
  auto at = [&](double t, std::function<void()> f) { events.push({t, order++, std::move(f)}); };
  SimResult res;

  // The token model: the target's token after seq[0..p), and the drafter's next draft.
  const bool iid = cfg.model == TokenModel::kIid;
  if (iid && !cfg.sampling.greedy()) {
    throw std::invalid_argument("the i.i.d. token model is greedy: sampling needs the synthetic model");
  }
  std::mt19937_64 rng(cfg.iid_seed);
  std::uniform_real_distribution<double> uniform(0.0, 1.0);
  auto target_at = [&](const std::vector<Token>& seq, size_t p) {
    if (iid) return iid_target(cfg.target.seed, p, cfg.target.vocab);
    return synthetic::target_next(cfg.target.seed, hash_of(cfg.target.seed, seq, p),
                                  cfg.target.vocab);
  };
  auto draft_after = [&](const std::vector<Token>& seq) {
    if (iid) {
      const Token right = iid_target(cfg.target.seed, seq.size(), cfg.target.vocab);
      if (uniform(rng) < cfg.drafter.acceptance || cfg.target.vocab < 2) return right;
      return static_cast<Token>((right + 1) % cfg.target.vocab);
    }
    return synthetic::drafter_next(cfg.drafter.seed,
                                   hash_of(cfg.drafter.seed, seq, seq.size()),
                                   cfg.drafter.vocab, cfg.drafter.acceptance);
  };

  // Drafter: one draft per forward; a new chain supersedes the forward in progress.
  uint64_t d_chain = 0, d_gen = 0;
  std::vector<Token> d_seq;
  int d_window = -1, d_stop = 0;
  const bool sampling = !cfg.sampling.greedy();
  std::map<std::pair<uint64_t, int>, std::vector<float>> q_store;  // (chain, pos) -> q
  const double d_cost = cfg.drafter.forward_ms + cfg.drafter.per_token_ms;

  // Targets: the sequence each one's KV cache holds, and its running task.
  const int n_targets = cfg.sched.n_targets;
  std::vector<std::vector<Token>> t_cache(n_targets, cfg.prompt);
  std::vector<uint64_t> t_task(n_targets, 0);
  std::vector<double> t_start(n_targets, 0);
  std::map<uint64_t, int> task_target;

  std::function<void(const std::vector<Action>&)> run_actions;
  std::function<void(uint64_t)> draft_step = [&](uint64_t gen) {
    if (gen != d_gen) return;
    if (d_window == 0 || static_cast<int>(d_seq.size()) >= d_stop) return;
    at(now + d_cost, [&, gen] {
      if (gen != d_gen) return;
      const int pos = static_cast<int>(d_seq.size());
      Token tok;
      if (sampling) {
        auto q = synthetic_probs(cfg.drafter, d_seq, cfg.sampling);
        tok = draft_sample(q, pos, cfg.sampling);
        q_store[{d_chain, pos}] = std::move(q);
      } else {
        tok = draft_after(d_seq);
      }
      d_seq.push_back(tok);
      if (d_window > 0) --d_window;
      run_actions(sched.on_draft(d_chain, pos, tok));
      draft_step(gen);
    });
  };

  run_actions = [&](const std::vector<Action>& acts) {
    for (const Action& a : acts) {
      if (a.kind == Action::kStartChain) {
        d_chain = a.id;
        ++d_gen;
        d_seq = a.seq;
        d_window = a.window;
        d_stop = a.stop_len;
        draft_step(d_gen);
      } else if (a.kind == Action::kVerify) {
        const int tg = a.target;
        auto& cache = t_cache[tg];
        const size_t keep = std::min(common_prefix(cache, a.seq), a.seq.size() - a.n_logits);
        const int n = static_cast<int>(a.seq.size() - keep);
        cache.assign(a.seq.begin(), a.seq.begin() + keep);
        t_task[tg] = a.id;
        t_start[tg] = now;
        task_target[a.id] = tg;
        const double cost = cfg.target.forward_ms + n * cfg.target.per_token_ms;
        at(now + cost, [&, tg, a] {
          if (t_task[tg] != a.id) return;  // cancelled meanwhile
          t_task[tg] = 0;
          res.target_busy_ms += now - t_start[tg];
          const auto& seq = a.seq;
          t_cache[tg] = seq;
          std::vector<Token> y;
          const size_t first = seq.size() - a.n_logits + 1;
          if (sampling) {
            std::vector<float> p;
            auto p_at = [&](int pos) {
              p = synthetic_probs(cfg.target, std::vector<Token>(seq.begin(), seq.begin() + pos),
                                  cfg.sampling);
              return std::span<const float>(p);
            };
            auto q_at = [&](int pos) { return std::span<const float>(q_store.at({a.chain, pos})); };
            y = verify_sampled(seq, static_cast<int>(first), p_at, q_at,
                               BonusRule{a.bonus_anchor, a.bonus_period}, cfg.sampling,
                               cfg.verifier);
          } else {
            for (size_t p = first; p <= seq.size(); ++p) y.push_back(target_at(seq, p));
          }
          run_actions(sched.on_result(a.id, y));
        });
      } else if (a.kind == Action::kCancel) {
        const int tg = a.target;
        if (t_task[tg] != a.id) continue;
        t_task[tg] = 0;
        res.target_busy_ms += now - t_start[tg];
        res.wasted_ms += now - t_start[tg];
        at(now, [&, id = a.id] { run_actions(sched.on_cancelled(id)); });
      }
    }
  };

  run_actions(sched.start());
  double last_commit = 0;
  size_t committed = sched.committed().size();
  while (!events.empty() && !sched.done()) {
    Event e = events.top();
    events.pop();
    now = e.time;
    e.fire();
    if (sched.committed().size() != committed) {
      committed = sched.committed().size();
      last_commit = now;
    }
  }
  if (!sched.done()) throw std::logic_error("simulation ran out of events before finishing");
  res.tokens.assign(sched.committed().begin() + sched.prompt_len(), sched.committed().end());
  res.total_ms = last_commit;
  res.latency_per_token_ms = res.tokens.empty() ? 0 : last_commit / res.tokens.size();
  res.stats = sched.stats();
  return res;
}

}  // namespace dsi
