// Scheduler tests in virtual time (sim/simulator): losslessness over the acceptance
// grid, and the ideal latencies of docs/dsi.md ("Ideal latencies") when servers are ample.
#include <gtest/gtest.h>

#include <cmath>

#include "sim/simulator.h"

namespace dsi {
namespace {

SimConfig make(Mode mode, int sp, int k, double a, double t, double c, int n, uint64_t seed) {
  SimConfig cfg;
  cfg.sched.mode = mode;
  cfg.sched.n_targets = sp;
  cfg.sched.lookahead = k;
  cfg.sched.max_new_tokens = n;
  cfg.target = SyntheticParams{.seed = seed, .vocab = 64, .ttft_ms = t, .forward_ms = t};
  cfg.drafter = SyntheticParams{.seed = seed, .vocab = 64, .acceptance = a, .ttft_ms = c,
                                .forward_ms = c, .drafter = true};
  cfg.prompt = synthetic_prompt(seed, 8, 64);
  return cfg;
}

TEST(Scheduler, LosslessForEveryModeSpLookaheadAndAcceptance) {
  for (Mode mode : {Mode::kNonSi, Mode::kSi, Mode::kDsi}) {
    for (int sp = 1; sp <= 6; ++sp) {
      for (int k : {1, 3, 5}) {
        for (double a : {0.0, 0.5, 0.9, 1.0}) {
          for (uint64_t seed : {1, 2}) {
            SimConfig cfg = make(mode, sp, k, a, 20, 2 + seed, 60, seed);
            const auto ref = synthetic_reference(cfg.target, cfg.prompt, 60);
            const SimResult r = simulate(cfg);
            ASSERT_EQ(r.tokens, ref) << mode_name(mode) << " sp=" << sp << " k=" << k
                                     << " a=" << a << " seed=" << seed;
          }
        }
      }
    }
  }
}

TEST(Scheduler, RoundRobinSpreadsTasksAndStaysLossless) {
  for (int sp : {2, 3, 5}) {
    for (double a : {0.3, 0.9}) {
      SimConfig cfg = make(Mode::kDsi, sp, 2, a, 20, 3, 60, 7);
      cfg.sched.target_choice = TargetChoice::kRoundRobin;
      EXPECT_EQ(simulate(cfg).tokens, synthetic_reference(cfg.target, cfg.prompt, 60))
          << "sp=" << sp << " a=" << a;
    }
  }
}

TEST(Scheduler, StopTokenEndsGeneration) {
  SimConfig cfg = make(Mode::kDsi, 3, 2, 0.7, 20, 2, 200, 5);
  const auto full = synthetic_reference(cfg.target, cfg.prompt, 200);
  cfg.sched.stop_tokens = {full[17]};
  const auto ref = synthetic_reference(cfg.target, cfg.prompt, 200, cfg.sched.stop_tokens);
  ASSERT_LT(ref.size(), 200u);
  EXPECT_EQ(simulate(cfg).tokens, ref);
}

double si_ideal(double t, double c, double a, int k) {
  return (k * c + t) * (1 - a) / (1 - std::pow(a, k + 1));
}
double dsi_ideal(double t, double c, double a, int k) {
  return (1 - a) * (t + k * c * a / (1 - std::pow(a, k)));
}

TEST(Scheduler, MatchesClosedFormsWhenServersAreAmple) {
  struct Case { double c, a; int k; };
  for (Case cs : {Case{0.1, 0.9, 5}, Case{0.05, 0.8, 5}, Case{0.2, 0.5, 2}, Case{0.3, 0.3, 3}}) {
    const double t = 20, c = cs.c * t;
    const int n = 4000;
    SimResult dsi = simulate(make(Mode::kDsi, 16, cs.k, cs.a, t, c, n, 9));
    SimResult si = simulate(make(Mode::kSi, 1, cs.k, cs.a, t, c, n, 9));
    SimResult non = simulate(make(Mode::kNonSi, 1, cs.k, cs.a, t, c, n, 9));
    EXPECT_NEAR(non.latency_per_token_ms, t, 1e-9);
    EXPECT_NEAR(si.latency_per_token_ms / si_ideal(t, c, cs.a, cs.k), 1.0, 0.05)
        << "SI c=" << cs.c << " a=" << cs.a << " k=" << cs.k;
    EXPECT_NEAR(dsi.latency_per_token_ms / dsi_ideal(t, c, cs.a, cs.k), 1.0, 0.05)
        << "DSI c=" << cs.c << " a=" << cs.a << " k=" << cs.k;
    EXPECT_LE(dsi.latency_per_token_ms, non.latency_per_token_ms * 1.0001);
  }
}

TEST(Scheduler, RejectionPreemptsStaleTasks) {
  SimResult r = simulate(make(Mode::kDsi, 8, 1, 0.5, 20, 1, 200, 3));
  EXPECT_GT(r.stats.tasks_preempted, 0);
  EXPECT_GT(r.wasted_ms, 0);
  EXPECT_GT(r.stats.drafts_rejected, 0);
}

TEST(Scheduler, ShortSpQueuesButStaysLossless) {
  SimConfig cfg = make(Mode::kDsi, 1, 1, 0.9, 20, 1, 100, 4);
  SimResult r = simulate(cfg);
  EXPECT_EQ(r.tokens, synthetic_reference(cfg.target, cfg.prompt, 100));
  EXPECT_GT(r.stats.tasks_cancelled_queued, 0);
}

}  // namespace
}  // namespace dsi
