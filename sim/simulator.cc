#include "sim/simulator.h"

#include <algorithm>
#include <climits>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <queue>
#include <random>
#include <stdexcept>

#include "core/tree_draft.h"

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
  bool operator>(const Event& o) const { return time != o.time ? time > o.time : order > o.order; }
};

// The i.i.d. model's target token at position p: independent of the context, so a task's
// predictions after a wrong draft are still well defined (and ignored by the scheduler).
Token iid_target(uint64_t seed, size_t p, int vocab) {
  return synthetic::target_next(
      seed, synthetic::extend_hash(synthetic::start_hash(seed), static_cast<Token>(p)), vocab);
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
  synthetic::logits(model, hash_of(model.seed, context, context.size()), context.size(),
                    logits.data());
  return sampling_probs(logits, sp);
}

std::vector<Token> synthetic_sampled_reference(const SyntheticParams& target,
                                               const std::vector<Token>& prompt, int max_new_tokens,
                                               const SamplingParams& sp) {
  std::vector<Token> ctx = prompt;
  for (int i = 0; i < max_new_tokens; ++i) {
    // Non-SI is verification with no drafts: every position is the target's own sample.
    const auto p = synthetic_probs(target, ctx, sp);
    const Token t = verify_sampled(
        ctx, static_cast<int>(ctx.size()), [&](int) { return std::span<const float>(p); }, nullptr,
        BonusRule{}, sp)[0];
    ctx.push_back(t);
  }
  return std::vector<Token>(ctx.begin() + prompt.size(), ctx.end());
}

SimConfig sim_config(const RunConfig& cfg, int sp) {
  SimConfig sc;
  sc.sched = {.mode = cfg.mode,
              .lookahead = cfg.lookahead,
              .n_targets = sp,
              .max_new_tokens = cfg.max_new_tokens,
              .queue = cfg.queue,
              .target_choice = cfg.target_choice,
              .tree = cfg.tree,
              .followers = std::max(0, cfg.n_drafters() - 1)};
  sc.target = {.seed = cfg.seed,
               .vocab = cfg.vocab,
               .forward_ms = cfg.t_ms,
               .per_token_ms = cfg.per_token_ms};
  sc.drafter = {.seed = cfg.seed,
                .vocab = cfg.vocab,
                .acceptance = cfg.a,
                .forward_ms = cfg.c * cfg.t_ms,
                .drafter = true,
                .overlap = cfg.overlap,
                .phases = cfg.a_phases,
                .phase_start = cfg.prompt_tokens,
                .phase_len = cfg.phase_tokens,
                .second = cfg.second};
  sc.prompt = synthetic_prompt(cfg.seed, cfg.prompt_tokens, cfg.vocab);
  // Synthetic engines hold no KV that can be handed over (kv_bytes_per_token 0): a real run
  // plans no handoff, and neither does its simulation.
  sc.sched.kv = {.policy = parse_kv_policy(cfg.kv_handoff).value_or(KvPolicy::kNever),
                 .bytes_per_token = 0,
                 .gbps = cfg.kv_gbps};
  sc.sampling = sampling_params(cfg);
  if (cfg.adapt) sc.adapt = AdaptOptions{.n_targets = sp, .max_k = std::max(8, cfg.lookahead)};
  return sc;
}

SimResult simulate(const SimConfig& cfg) {
  Scheduler sched(cfg.sched, cfg.prompt);
  std::priority_queue<Event, std::vector<Event>, std::greater<>> events;
  uint64_t order = 0;
  double now = 0;
  auto at = [&](double t, std::function<void()> f) { events.push({t, order++, std::move(f)}); };
  SimResult res;
  std::unique_ptr<Adapter> adapter;
  if (cfg.adapt && cfg.sched.mode != Mode::kNonSi) {
    adapter = std::make_unique<Adapter>(*cfg.adapt, ChainPlan{.mode = cfg.sched.mode,
                                                              .lookahead = cfg.sched.lookahead,
                                                              .sp = cfg.sched.n_targets});
    sched.set_planner([&] {
      adapter->checked(sched.stats());
      return adapter->plan((now - res.setup_ms) / 1e3, sched.generated());
    });
  } else if (cfg.planner) {
    sched.set_planner(cfg.planner);
  }

  // The token model: the target's token after seq[0..p), and the drafter's next draft.
  const bool iid = cfg.model == TokenModel::kIid;
  if (iid && !cfg.sampling.greedy()) {
    throw std::invalid_argument(
        "the i.i.d. token model is greedy: sampling needs the synthetic model");
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
      if (uniform(rng) < synthetic::acceptance_at(cfg.drafter, seq.size()) ||
          cfg.target.vocab < 2) {
        return right;
      }
      return static_cast<Token>((right + 1) % cfg.target.vocab);
    }
    return synthetic::drafter_next(cfg.drafter.seed, hash_of(cfg.drafter.seed, seq, seq.size()),
                                   cfg.drafter.vocab,
                                   synthetic::acceptance_at(cfg.drafter, seq.size()));
  };

  // Drafter: one draft per forward; a new chain supersedes the forward in progress.
  uint64_t d_chain = 0, d_gen = 0;
  std::vector<Token> d_seq;
  int d_window = -1, d_stop = 0;
  const bool sampling = !cfg.sampling.greedy();
  std::map<std::pair<uint64_t, int>, std::vector<float>> q_store;  // (chain, pos) -> q
  const double d_cost = cfg.drafter.forward_ms + cfg.drafter.per_token_ms;

  // Targets: like a worker's compute thread, each runs one piece of work at a time from its
  // inbox: a prefill, a verification, or one side of a KV handoff. A handoff's source sends
  // ahead of queued work (behind earlier sends); the destination waits for the KV.
  struct Work {
    Action a;
    bool send = false;  // kKvHandoff: the source's side
  };
  struct SimTarget {
    std::vector<Token> cache;     // the tokens whose KV its engine holds
    int imported_from = INT_MAX;  // lowest cache position holding imported KV
    std::deque<Work> inbox;
    bool busy = false;
    uint64_t task = 0;     // the verification running (0: none)
    uint64_t waiting = 0;  // the handoff whose KV it waits for (0: none)
    int n = 0;             // tokens the running verification computes
    double start = 0;
  };
  const int n_targets = cfg.sched.n_targets;
  std::vector<SimTarget> tg(n_targets);
  std::map<uint64_t, bool> served;  // handoff -> whether its source held the range
  const double kv_bytes = cfg.sched.kv.bytes_per_token;

  std::function<void(const std::vector<Action>&)> run_actions;
  std::function<void(int)> kick;
  // Merged drafters (sched.followers): each follows the lead's chain and, whenever it is idle
  // and positions are due, proposes its token at all of them in one forward (the drafter's
  // cost), as core/drafter_role.cc does; stream j + 1 of the drafter model draws its errors.
  struct Follower {
    uint64_t gen = 0, chain = 0;
    std::vector<Token> seq;  // committed + the lead's drafts received
    size_t next = 0, limit = 0;
    bool busy = false;
  };
  std::vector<Follower> fl(std::max(0, cfg.sched.followers));
  auto propose_at = [&](int j, const std::vector<Token>& ctx) {
    SyntheticParams p = cfg.drafter;
    p.stream = static_cast<uint32_t>(j + 1);
    const size_t pos = ctx.size();
    if (iid) {
      const Token right = iid_target(cfg.target.seed, pos, cfg.target.vocab);
      if (uniform(rng) < synthetic::acceptance_at(p, pos)) return right;
      return static_cast<Token>((right + 2 + j) % cfg.target.vocab);
    }
    if (sampling) {
      return draft_sample(synthetic_probs(p, ctx, cfg.sampling), static_cast<int>(pos),
                          cfg.sampling);
    }
    return synthetic::drafter_next(p.seed, hash_of(p.seed, ctx, pos), p.vocab,
                                   synthetic::acceptance_at(p, pos), p.stream);
  };
  std::function<void(int)> follow_step = [&](int j) {
    Follower& f = fl[j];
    if (f.busy || f.next > f.seq.size() || f.next >= f.limit) return;
    const size_t from = f.next, to = std::min(f.seq.size(), f.limit - 1);
    f.busy = true;
    const double cost = cfg.drafter.forward_ms + (to - from + 1) * cfg.drafter.per_token_ms;
    at(now + cost, [&, j, gen = f.gen, from, to] {
      Follower& g = fl[j];
      if (gen != g.gen) return;  // a new chain superseded it (and started its own step)
      g.busy = false;
      std::vector<Token> toks;
      for (size_t p = from; p <= to; ++p) {
        toks.push_back(propose_at(j, std::vector<Token>(g.seq.begin(), g.seq.begin() + p)));
      }
      g.next = to + 1;
      run_actions(sched.on_proposals(j, g.chain, static_cast<int>(from), toks));
      follow_step(j);
    });
  };

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
      if (adapter) adapter->draft(d_cost / 1e3);
      for (size_t j = 0; j < fl.size(); ++j) {
        if (fl[j].chain == d_chain && fl[j].seq.size() == static_cast<size_t>(pos)) {
          fl[j].seq.push_back(tok);
          follow_step(static_cast<int>(j));
        }
      }
      run_actions(sched.on_draft(d_chain, pos, tok));
      draft_step(gen);
    });
  };

  // Token trees: the drafter's forward of the committed text, then one tree forward per
  // further depth, and the tree (tree_children of the drafter's logits at every node). SI
  // drafts one per chain; DSI the next below this one's first path, until the stop length.
  std::function<void(uint64_t, std::vector<int>)> draft_tree_now = [&](uint64_t gen,
                                                                       std::vector<int> shape) {
    const int pos0 = static_cast<int>(d_seq.size());
    if (d_window == 0 || pos0 >= d_stop) return;
    const std::vector<int> full = shape;
    shape.resize(std::min<size_t>(shape.size(), d_stop - pos0));
    TokenTree tree;
    double cost = d_cost;
    auto children = [&](const std::vector<Token>& ctx, int b) {
      if (iid) {
        // The target's token is the drafter's best with probability a, its r-th best with
        // iid_ranks[r - 2]; the other children are wrong.
        const Token right = iid_target(cfg.target.seed, ctx.size(), cfg.target.vocab);
        double u = uniform(rng), edge = synthetic::acceptance_at(cfg.drafter, ctx.size());
        int rank = u < edge ? 0 : -1;
        for (size_t r = 0; rank < 0 && r < cfg.iid_ranks.size(); ++r) {
          edge += cfg.iid_ranks[r];
          if (u < edge) rank = static_cast<int>(r) + 1;
        }
        std::vector<Token> out;
        for (int j = 0; j < b; ++j) {
          out.push_back(j == rank ? right : static_cast<Token>((right + 1 + j) % cfg.target.vocab));
        }
        return out;
      }
      std::vector<float> logits(cfg.drafter.vocab);
      synthetic::logits(cfg.drafter, hash_of(cfg.drafter.seed, ctx, ctx.size()), ctx.size(),
                        logits.data());
      return tree_children(logits, b, static_cast<int>(ctx.size()), cfg.sampling);
    };
    for (Token t : children(d_seq, shape[0])) tree.add(t, -1);
    for (size_t d = 1, begin = 0; d < shape.size(); ++d) {
      const size_t end = tree.size();
      cost += cfg.drafter.forward_ms + (end - begin) * cfg.drafter.per_token_ms;
      for (size_t node = begin; node < end; ++node) {
        std::vector<Token> ctx = d_seq;
        for (Token t : tree.path_tokens(static_cast<int>(node))) ctx.push_back(t);
        for (Token t : children(ctx, shape[d])) tree.add(t, static_cast<int>(node));
      }
      begin = end;
    }
    at(now + cost, [&, gen, pos0, tree, cost, full] {
      if (gen != d_gen) return;
      if (d_window > 0) {
        d_window = 0;
      } else {
        for (int node : tree.first_path()) d_seq.push_back(tree.tokens[node]);
      }
      if (adapter) adapter->draft(cost / 1e3);
      run_actions(sched.on_draft_tree(d_chain, pos0, tree));
      if (gen == d_gen) draft_tree_now(gen, full);
    });
  };

  auto done_work = [&](int t) {
    tg[t].busy = false;
    kick(t);
  };
  // The destination of handoff `a` has its KV (or learnt that the source lacked it).
  auto import = [&](int t, const Action& a) {
    SimTarget& d = tg[t];
    d.waiting = 0;
    if (served.at(a.id)) {
      d.cache.assign(a.seq.begin(), a.seq.begin() + a.end);
      d.imported_from = std::min(d.imported_from, a.begin);
      ++res.kv.imported;
      res.kv.imported_tokens += a.end - a.begin;
    } else {
      ++res.kv.fallbacks;
    }
    done_work(t);
  };

  // A verification starts on target t: its cache keeps `keep` tokens, the forward computes the
  // rest of a.seq.
  auto start_forward = [&](int t, const Action& a, size_t keep) {
    SimTarget& w = tg[t];
    if (static_cast<int>(keep) <= w.imported_from) w.imported_from = INT_MAX;
    w.n = static_cast<int>(a.seq.size() - keep);
    w.cache.assign(a.seq.begin(), a.seq.begin() + keep);
    w.task = a.id;
    w.start = now;
  };
  auto forward_cost = [&](int t) {
    return cfg.target.forward_ms + tg[t].n * cfg.target.per_token_ms;
  };
  // Its forward ends: the busy time, or -1 when the task was cancelled meanwhile.
  auto forward_done = [&](int t, uint64_t task) {
    SimTarget& w = tg[t];
    if (w.task != task) return -1.0;
    w.task = 0;
    const double busy = now - w.start;
    res.target_busy_ms += busy;
    return busy;
  };

  // A tree verification: the committed tokens the cache lacks (at least the last) and the
  // tree in one forward; the target keeps the accepted path.
  auto verify_tree = [&](int t, const Action& a) {
    const size_t base = a.seq.size() - a.parents.size();
    start_forward(t, a, std::min(common_prefix(tg[t].cache, a.seq), base - 1));
    at(now + forward_cost(t), [&, t, a, base] {
      SimTarget& w = tg[t];
      const double busy = forward_done(t, a.id);
      if (busy < 0) return;  // cancelled meanwhile
      const TokenTree drafts{{a.seq.begin() + base, a.seq.end()}, a.parents};
      const std::vector<Token> committed(a.seq.begin(), a.seq.begin() + base);
      auto ctx_of = [&](int node) {
        std::vector<Token> c = committed;
        if (node >= 0) {
          for (Token x : drafts.path_tokens(node)) c.push_back(x);
        }
        return c;
      };
      TreeVerdict v;
      if (sampling) {
        std::vector<float> p, q;
        v = verify_tree_sampled(
            drafts, static_cast<int>(base),
            [&](int node) {
              p = synthetic_probs(cfg.target, ctx_of(node), cfg.sampling);
              return std::span<const float>(p);
            },
            [&](int node) {  // the residual coupling: the drafter's q after the node
              q = synthetic_probs(cfg.drafter, ctx_of(node), cfg.sampling);
              return std::span<const float>(q);
            },
            cfg.sampling);
      } else {
        v = verify_tree_exact(drafts, [&](int node) {
          const auto c = ctx_of(node);
          return target_at(c, c.size());
        });
      }
      std::vector<Token> y;
      for (int node : v.path) y.push_back(drafts.tokens[node]);
      w.cache = committed;
      w.cache.insert(w.cache.end(), y.begin(), y.end());
      y.push_back(v.next);
      w.busy = false;
      if (adapter) adapter->forward(w.n, busy / 1e3);
      run_actions(sched.on_result(a.id, y, Forward{w.n, busy / 1e3}));
      kick(t);
    });
  };

  auto verify = [&](int t, const Action& a) {
    if (!a.parents.empty()) {
      verify_tree(t, a);
      return;
    }
    const size_t keep = std::min(common_prefix(tg[t].cache, a.seq), a.seq.size() - a.n_logits);
    start_forward(t, a, keep);
    at(now + forward_cost(t), [&, t, a, keep] {
      SimTarget& w = tg[t];
      const double busy = forward_done(t, a.id);
      if (busy < 0) return;  // cancelled meanwhile
      const auto& seq = a.seq;
      w.cache = seq;
      if (w.imported_from < static_cast<int>(keep)) ++res.kv.verified_on_imported;
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
                           BonusRule{a.bonus_anchor, a.bonus_period}, cfg.sampling, cfg.verifier);
      } else {
        for (size_t p = first; p <= seq.size(); ++p) y.push_back(target_at(seq, p));
      }
      w.busy = false;
      if (adapter) adapter->forward(w.n, busy / 1e3);
      run_actions(sched.on_result(a.id, y, Forward{w.n, busy / 1e3}));
      if (adapter || cfg.planner) run_actions(sched.checkpoint());
      kick(t);
    });
  };

  kick = [&](int t) {
    SimTarget& w = tg[t];
    if (w.busy || w.inbox.empty()) return;
    Work work = std::move(w.inbox.front());
    w.inbox.pop_front();
    w.busy = true;
    const Action& a = work.a;
    if (a.kind == Action::kVerify) {
      verify(t, a);
    } else if (a.kind == Action::kPrefill) {
      // Setup: a prefill computes what the cache lacks (a handed-over prompt: nothing).
      const size_t keep = common_prefix(w.cache, a.seq);
      const int n = static_cast<int>(a.seq.size() - keep);
      const double cost = n == 0 ? 0
                                 : (keep == 0 ? cfg.target.ttft_ms : cfg.target.forward_ms) +
                                       n * cfg.target.per_token_ms;
      at(now + cost, [&, t, seq = a.seq] {
        tg[t].cache = seq;
        tg[t].busy = false;
        run_actions(sched.on_prefilled(t));
        kick(t);
      });
    } else if (work.send) {
      // The source checks it holds the range for exactly these tokens, then sends it.
      const bool ok = a.begin >= 0 && a.begin < a.end &&
                      common_prefix(w.cache, a.seq) >= static_cast<size_t>(a.end);
      const int n = a.end - a.begin;
      const double cost = ok ? sched.kv().cost().transfer_s(n) * 1e3 : 0;
      if (ok) res.kv.sent_bytes += static_cast<int64_t>(n * kv_bytes);
      at(now + cost, [&, t, a, ok] {
        served[a.id] = ok;
        const auto waiter = std::find_if(tg.begin(), tg.end(),
                                         [&](const SimTarget& d) { return d.waiting == a.id; });
        if (waiter != tg.end()) import(static_cast<int>(waiter - tg.begin()), a);
        done_work(t);
      });
    } else {
      // The destination imports only where its cache reaches the range's start.
      const size_t have = common_prefix(w.cache, a.seq);
      if (have >= static_cast<size_t>(a.end)) {
        ++res.kv.not_needed;
        done_work(t);
      } else if (have < static_cast<size_t>(a.begin)) {
        ++res.kv.fallbacks;  // the next forward recomputes
        done_work(t);
      } else if (served.count(a.id)) {
        import(t, a);
      } else {
        w.waiting = a.id;  // the source's send completes it
      }
    }
  };

  auto deliver = [&](int t, Work w) {
    auto& inbox = tg[t].inbox;
    if (w.send) {
      inbox.insert(std::find_if(inbox.begin(), inbox.end(), [](const Work& q) { return !q.send; }),
                   std::move(w));
    } else {
      inbox.push_back(std::move(w));
    }
    kick(t);
  };

  run_actions = [&](const std::vector<Action>& acts) {
    for (const Action& a : acts) {
      if (a.kind == Action::kStartChain) {
        d_chain = a.id;
        ++d_gen;
        d_seq = a.seq;
        d_window = a.window;
        d_stop = a.stop_len;
        for (size_t j = 0; j < fl.size(); ++j) {
          Follower& f = fl[j];
          f = Follower{.gen = f.gen + 1, .chain = a.id, .seq = a.seq, .next = a.seq.size()};
          f.limit = static_cast<size_t>(std::max(0, a.stop_len));
          if (a.window >= 0) f.limit = std::min(f.limit, a.seq.size() + a.window);
        }
        for (size_t j = 0; j < fl.size(); ++j) follow_step(static_cast<int>(j));
        if (a.tree.empty()) {
          draft_step(d_gen);
        } else {
          draft_tree_now(d_gen, a.tree);
        }
      } else if (a.kind == Action::kVerify || a.kind == Action::kPrefill) {
        deliver(a.target, Work{a});
      } else if (a.kind == Action::kKvHandoff) {
        ++res.kv.planned;
        deliver(a.target, Work{a, true});
        deliver(a.dst, Work{a, false});
      } else if (a.kind == Action::kCancel) {
        SimTarget& w = tg[a.target];
        if (w.task == a.id) {
          w.task = 0;
          res.target_busy_ms += now - w.start;
          res.wasted_ms += now - w.start;
          at(now, [&, id = a.id] { run_actions(sched.on_cancelled(id)); });
          done_work(a.target);
          continue;
        }
        auto it = std::find_if(w.inbox.begin(), w.inbox.end(), [&](const Work& q) {
          return q.a.kind == Action::kVerify && q.a.id == a.id;
        });
        if (it == w.inbox.end()) continue;  // finished: its result is on its way
        w.inbox.erase(it);
        at(now, [&, id = a.id] { run_actions(sched.on_cancelled(id)); });
      }
    }
  };

  // Setup (prefill, the prompt's handoff) is simulated but not counted, as in a real run.
  run_actions(sched.prefill());
  while (!events.empty() && !sched.prefilled()) {
    Event e = events.top();
    events.pop();
    now = e.time;
    e.fire();
  }
  if (!sched.prefilled()) throw std::logic_error("simulation ran out of events during prefill");
  res.setup_ms = now;
  res.kv.prompt = sched.prompt_handed_over();

  run_actions(sched.start());
  double last_commit = now;
  size_t committed = sched.committed().size();
  while (!events.empty() && !sched.done()) {
    Event e = events.top();
    events.pop();
    now = e.time;
    e.fire();
    if (sched.committed().size() != committed) {
      committed = sched.committed().size();
      last_commit = now;
      res.commit_ms.resize(committed - sched.prompt_len(), now - res.setup_ms);
    }
  }
  if (!sched.done()) throw std::logic_error("simulation ran out of events before finishing");
  res.tokens.assign(sched.committed().begin() + sched.prompt_len(), sched.committed().end());
  res.total_ms = last_commit - res.setup_ms;
  res.latency_per_token_ms = res.tokens.empty() ? 0 : res.total_ms / res.tokens.size();
  res.stats = sched.stats();
  if (adapter) {
    adapter->checked(sched.stats());
    adapter->finish(res.total_ms / 1e3, sched.generated());
    res.adapt = adapter->decisions();
    res.tokens_by_mode = adapter->tokens_by_mode();
  }
  return res;
}

}  // namespace dsi
