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
};

// Simulated latency per token of `mode` with lookahead k on sp targets (SI and non-SI use
// one target whatever sp is).
SimEstimate simulate_iid(Mode mode, const LatencyInputs& in, int k, int sp,
                         const PlanOptions& opts);

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

}  // namespace dsi
