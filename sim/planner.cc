#include "sim/planner.h"

#include <algorithm>
#include <limits>
#include <stdexcept>

#include "sim/simulator.h"

namespace dsi {

SimEstimate simulate_iid(Mode mode, const LatencyInputs& in, int k, int sp, const PlanOptions& opts,
                         const std::vector<int>& tree) {
  if (opts.runs < 1 || opts.tokens < 1) throw std::invalid_argument("runs and tokens must be >= 1");
  SimEstimate e;
  double total_ms = 0, tokens = 0, verifications = 0;
  for (int run = 0; run < opts.runs; ++run) {
    SimConfig sc;
    sc.sched = {.mode = mode,
                .lookahead = tree.empty() ? k : static_cast<int>(tree.size()),
                .n_targets = mode == Mode::kDsi ? sp : 1,
                .max_new_tokens = opts.tokens,
                .queue = opts.queue,
                .tree = mode == Mode::kNonSi ? std::vector<int>{} : tree};
    sc.iid_ranks = in.ranks;
    // Vocabulary and seed only shape token ids, which the i.i.d. model keeps independent of
    // the acceptance draws.
    sc.target = {.seed = opts.seed + run,
                 .vocab = 1024,
                 .forward_ms = in.t_ms,
                 .per_token_ms = in.per_token_ms};
    sc.drafter = {.seed = opts.seed + run,
                  .vocab = 1024,
                  .acceptance = in.a,
                  .forward_ms = in.c_ms,
                  .drafter = true};
    sc.prompt = synthetic_prompt(opts.seed + run, 4, 1024);
    sc.model = TokenModel::kIid;
    sc.iid_seed = opts.seed * 1000003 + run;
    const SimResult r = simulate(sc);
    total_ms += r.total_ms;
    tokens += static_cast<double>(r.tokens.size());
    verifications += static_cast<double>(r.stats.tasks_completed);
    e.preempted_per_token += r.stats.tasks_preempted;
    e.cancelled_queued_per_token += r.stats.tasks_cancelled_queued;
    e.target_busy_ms_per_token += r.target_busy_ms;
    e.wasted_ms_per_token += r.wasted_ms;
  }
  e.latency_ms = total_ms / tokens;
  e.tokens_per_verification = verifications > 0 ? tokens / verifications : 0;
  e.preempted_per_token /= tokens;
  e.cancelled_queued_per_token /= tokens;
  e.target_busy_ms_per_token /= tokens;
  e.wasted_ms_per_token /= tokens;
  return e;
}

Recommendation recommend(const LatencyInputs& in, int max_k, int max_sp, double tolerance,
                         const PlanOptions& opts) {
  if (max_k < 1 || max_sp < 1) throw std::invalid_argument("max_k and max_sp must be >= 1");
  Recommendation rec;
  rec.best.dsi_ms = std::numeric_limits<double>::infinity();
  rec.si_ms = std::numeric_limits<double>::infinity();
  rec.nonsi_ms = simulate_iid(Mode::kNonSi, in, 1, 1, opts).latency_ms;
  // best_at[sp]: the best k at that SP.
  std::vector<PlanPoint> best_at(max_sp + 1,
                                 PlanPoint{0, 0, std::numeric_limits<double>::infinity()});
  for (int k = 1; k <= max_k; ++k) {
    const double si = simulate_iid(Mode::kSi, in, k, 1, opts).latency_ms;
    if (si < rec.si_ms) {
      rec.si_ms = si;
      rec.si_k = k;
    }
    for (int sp = 1; sp <= max_sp; ++sp) {
      const PlanPoint p{k, sp, simulate_iid(Mode::kDsi, in, k, sp, opts).latency_ms};
      rec.grid.push_back(p);
      if (p.dsi_ms < best_at[sp].dsi_ms) best_at[sp] = p;
      if (p.dsi_ms < rec.best.dsi_ms) rec.best = p;
    }
  }
  for (int sp = 1; sp <= max_sp; ++sp) {
    if (best_at[sp].dsi_ms <= rec.best.dsi_ms * (1 + tolerance)) {
      rec.recommended = best_at[sp];
      break;
    }
  }
  return rec;
}

std::vector<TreePlan> recommend_trees(const LatencyInputs& in,
                                      const std::vector<std::vector<int>>& trees, int max_sp,
                                      double tolerance, const PlanOptions& opts) {
  if (max_sp < 1) throw std::invalid_argument("max_sp must be >= 1");
  std::vector<TreePlan> out;
  for (const auto& tree : trees) {
    const int k = static_cast<int>(tree.size());
    std::vector<double> at(max_sp + 1);
    double best = std::numeric_limits<double>::infinity();
    for (int sp = 1; sp <= max_sp; ++sp) {
      at[sp] = simulate_iid(Mode::kDsi, in, k, sp, opts, tree).latency_ms;
      best = std::min(best, at[sp]);
    }
    TreePlan p{.tree = tree, .si_ms = simulate_iid(Mode::kSi, in, k, 1, opts, tree).latency_ms};
    for (int sp = 1; sp <= max_sp && p.sp == 0; ++sp) {
      if (at[sp] <= best * (1 + tolerance)) p = {tree, sp, at[sp], p.si_ms};
    }
    out.push_back(p);
  }
  return out;
}

}  // namespace dsi
