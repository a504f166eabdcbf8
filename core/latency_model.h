// The closed-form latencies of docs/dsi.md, section "Ideal latencies" (zero overhead, i.i.d.
// acceptance rate a, enough target servers) and the SP degree at which DSI stops waiting for
// a server (here in core/ because the adaptive policy, core/adapt.h, predicts with them). The
// event-driven simulator (sim/) gives the same quantities without those
// assumptions.
#pragma once

#include <vector>

#include "core/scheduler.h"

namespace dsi {

// A model pair as the closed forms see it, in milliseconds. A target forward of n tokens
// costs t_ms + n * per_token_ms; a draft costs c_ms.
struct LatencyInputs {
  double t_ms = 20;
  double c_ms = 2;
  double a = 0.9;
  double per_token_ms = 0;
  // Token trees: the probability that the target's token is the drafter's 2nd, 3rd, ... best
  // (its best: a), what siblings catch. The closed forms model chains and ignore it.
  std::vector<double> ranks;
  double target_ms(int n_tokens) const { return t_ms + n_tokens * per_token_ms; }
};

// Expected latency per generated token of `mode` with lookahead k (non-SI: t; SI:
// (kc + t)(1 - a)/(1 - a^(k+1)); DSI: (1 - a)(t + kc·a/(1 - a^k))), with t the cost of a
// forward of k + 1 tokens for SI and DSI, of one token for non-SI. A DSI task verifies every
// pending draft, often more than k, so when per_token_ms > 0 its form is a lower bound.
double ideal_latency_ms(Mode mode, const LatencyInputs& in, int k);

// Verification tasks in flight at once in DSI: ceil(t / (k·c)). With at least this many
// targets no task ever queues (infinite when c = 0: SP can never be enough).
int dsi_sp_needed(const LatencyInputs& in, int k);

}  // namespace dsi
