// The planner behind `dsi simulate`: predicts non-SI / SI / DSI latency per token of a model
// pair by running the scheduler in virtual time with i.i.d. acceptance (sim/simulator),
// queueing included when SP is short, and recommends a lookahead and an SP degree.
#pragma once

#include <cstdint>
#include <vector>

#include "core/latency_model.h"
#include "core/scheduler.h"

namespace dsi {

struct PlanOptions {
  int tokens = 1000;  // tokens per simulated run
  int runs = 20;      // independent runs (seeds) averaged: latency = total time / total tokens
  uint64_t seed = 1;
  QueuePolicy queue = QueuePolicy::kNewest;
};

struct SimEstimate {
  double latency_ms = 0;  // per token, over all runs
  double preempted_per_token = 0;
  double cancelled_queued_per_token = 0;
  double target_busy_ms_per_token = 0;
  double wasted_ms_per_token = 0;
  double tokens_per_verification = 0;  // committed tokens per completed verification
};

// Simulated latency per token of `mode` with lookahead k on sp targets (SI and non-SI use
// one target whatever sp is); with a token-tree shape (k is then its depth), trees whose
// siblings catch the target's token as in.ranks says.
SimEstimate simulate_iid(Mode mode, const LatencyInputs& in, int k, int sp, const PlanOptions& opts,
                         const std::vector<int>& tree = {});

struct PlanPoint {
  int k = 0;
  int sp = 0;
  double dsi_ms = 0;  // simulated
};

struct Recommendation {
  PlanPoint best;         // lowest simulated DSI latency over the scanned grid
  PlanPoint recommended;  // smallest SP within `tolerance` of best, and its best k
  double si_ms = 0;       // simulated SI at the best SI lookahead
  int si_k = 0;
  double nonsi_ms = 0;
  std::vector<PlanPoint> grid;  // every scanned (k, sp)
};

// Scans k in [1, max_k] and sp in [1, max_sp].
Recommendation recommend(const LatencyInputs& in, int max_k, int max_sp, double tolerance,
                         const PlanOptions& opts);

// The best DSI plan with each token-tree shape over sp in [1, max_sp] (the smallest SP within
// `tolerance` of the shape's best), for the planner to set beside the chains' recommendation.
struct TreePlan {
  std::vector<int> tree;
  int sp = 0;
  double dsi_ms = 0;
  double si_ms = 0;  // SI with the same tree
};
std::vector<TreePlan> recommend_trees(const LatencyInputs& in,
                                      const std::vector<std::vector<int>>& trees, int max_sp,
                                      double tolerance, const PlanOptions& opts);

}  // namespace dsi
