// The i.i.d. acceptance model of the simulator and the planner built on it: lossless, equal
// to the closed forms of docs/dsi.md when SP is ample, slower when SP is short, and a sensible
// recommendation.
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>

#include "sim/planner.h"
#include "sim/simulator.h"

namespace dsi {
namespace {

// Drafts that were accepted or rejected (each rejection counts its first mismatching draft):
// in the i.i.d. model each is a Bernoulli(a) trial, so the realised rate lies within 4 binomial
// standard deviations of a (a miss by chance: 6e-5).
void expect_acceptance_near(const SchedulerStats& st, double a, const std::string& what) {
  const double n = static_cast<double>(st.drafts_accepted + st.drafts_rejected);
  ASSERT_GT(n, 0) << what;
  const double acc = st.drafts_accepted / n;
  const double four_sigma = 4 * std::sqrt(a * (1 - a) / n);
  EXPECT_NEAR(acc, a, four_sigma) << what << ": " << n << " drafts";
}

TEST(IidSimulator, LosslessAndSeeded) {
  for (Mode mode : {Mode::kNonSi, Mode::kSi, Mode::kDsi}) {
    for (int sp : {1, 3}) {
      for (double a : {0.0, 0.6, 1.0}) {
        SimConfig sc;
        sc.sched = {.mode = mode, .lookahead = 3, .n_targets = sp, .max_new_tokens = 80};
        sc.target = {.seed = 4, .vocab = 50, .forward_ms = 10};
        sc.drafter = {.seed = 4, .vocab = 50, .acceptance = a, .forward_ms = 1, .drafter = true};
        sc.prompt = synthetic_prompt(4, 6, 50);
        sc.model = TokenModel::kIid;
        sc.iid_seed = 7;
        const SimResult r = simulate(sc);
        ASSERT_EQ(r.tokens, simulated_reference(sc))
            << mode_name(mode) << " sp=" << sp << " a=" << a;
        EXPECT_EQ(simulate(sc).total_ms, r.total_ms);  // same seed, same run
        if (mode != Mode::kNonSi && a > 0 && a < 1) {
          const double acc = static_cast<double>(r.stats.drafts_accepted) /
                             (r.stats.drafts_accepted + r.stats.drafts_rejected);
          EXPECT_NEAR(acc, a, 0.2);
        }
        if (mode != Mode::kNonSi && (a == 0 || a == 1)) {  // no chance involved
          EXPECT_EQ(a == 0 ? r.stats.drafts_accepted : r.stats.drafts_rejected, 0)
              << mode_name(mode) << " sp=" << sp << " a=" << a;
        }
      }
    }
  }
}

// The realised acceptance rate over 30 runs of 1000 tokens per case (about 30000 drafts):
// within 4 binomial standard deviations of a (0.011 at a = 0.3 and 0.6, 0.007 at a = 0.9), for
// SI and for DSI with short and with ample SP. A drafter right with probability 0.95a instead
// of a is caught at every a.
TEST(IidSimulator, AcceptanceRateIsAWithinBinomialError) {
  for (double a : {0.3, 0.6, 0.9}) {
    for (auto [mode, sp] :
         {std::pair{Mode::kSi, 1}, std::pair{Mode::kDsi, 1}, std::pair{Mode::kDsi, 4}}) {
      SchedulerStats sum;
      for (int run = 0; run < 30; ++run) {
        SimConfig sc;
        sc.sched = {.mode = mode, .lookahead = 4, .n_targets = sp, .max_new_tokens = 1000};
        sc.target = {.seed = 9, .vocab = 50, .forward_ms = 10};
        sc.drafter = {.seed = 9, .vocab = 50, .acceptance = a, .forward_ms = 1, .drafter = true};
        sc.prompt = synthetic_prompt(9, 6, 50);
        sc.model = TokenModel::kIid;
        sc.iid_seed = 100 + run;
        const SimResult r = simulate(sc);
        ASSERT_EQ(r.tokens.size(), 1000u);
        sum.drafts_accepted += r.stats.drafts_accepted;
        sum.drafts_rejected += r.stats.drafts_rejected;
      }
      expect_acceptance_near(
          sum, a,
          std::string(mode_name(mode)) + " sp=" + std::to_string(sp) + " a=" + std::to_string(a));
    }
  }
}

// Over 40 x 1000 tokens the simulated latency agrees with the closed forms within 2%.
TEST(IidSimulator, AgreesWithClosedFormsWhenSpIsAmple) {
  struct Case {
    double c, a;
    int k;
  };
  const PlanOptions opts{.tokens = 1000, .runs = 40, .seed = 3};
  for (Case cs : {Case{0.1, 0.9, 5}, Case{0.05, 0.8, 5}, Case{0.2, 0.5, 2}, Case{0.3, 0.3, 3},
                  Case{0.1, 0.7, 1}}) {
    const LatencyInputs in{.t_ms = 20, .c_ms = cs.c * 20, .a = cs.a};
    const int sp = dsi_sp_needed(in, cs.k) + 1;
    for (Mode m : {Mode::kNonSi, Mode::kSi, Mode::kDsi}) {
      const double sim = simulate_iid(m, in, cs.k, sp, opts).latency_ms;
      const double ideal = ideal_latency_ms(m, in, cs.k);
      EXPECT_NEAR(sim / ideal, 1.0, 0.02) << mode_name(m) << " c=" << cs.c << " a=" << cs.a
                                          << " k=" << cs.k << " sim " << sim << " ideal " << ideal;
    }
  }
}

// A forward's cost grows with its tokens. SI verifies k + 1 tokens, as the closed form
// assumes; a DSI task verifies every pending draft (often more than k), so its closed form
// with t(k + 1) is only a lower bound.
TEST(IidSimulator, PerTokenCostGrowsTheTargetForward) {
  const LatencyInputs in{.t_ms = 10, .c_ms = 1, .a = 0.8, .per_token_ms = 1};
  const PlanOptions opts{.tokens = 1000, .runs = 30, .seed = 5};
  const double si = simulate_iid(Mode::kSi, in, 4, 1, opts).latency_ms;
  EXPECT_NEAR(si / ideal_latency_ms(Mode::kSi, in, 4), 1.0, 0.02);
  const double dsi = simulate_iid(Mode::kDsi, in, 4, 16, opts).latency_ms;
  EXPECT_GT(dsi, ideal_latency_ms(Mode::kDsi, in, 4));
  EXPECT_LT(dsi, ideal_latency_ms(Mode::kNonSi, in, 4));
}

TEST(IidSimulator, ShortSpIsSlowerAndQueues) {
  const LatencyInputs in{.t_ms = 20, .c_ms = 1, .a = 0.9};
  const PlanOptions opts{.tokens = 500, .runs = 10, .seed = 2};
  ASSERT_EQ(dsi_sp_needed(in, 2), 10);
  const SimEstimate ample = simulate_iid(Mode::kDsi, in, 2, 12, opts);
  const SimEstimate one = simulate_iid(Mode::kDsi, in, 2, 1, opts);
  const SimEstimate three = simulate_iid(Mode::kDsi, in, 2, 3, opts);
  EXPECT_GT(three.latency_ms, ample.latency_ms * 1.05);
  EXPECT_GT(one.latency_ms, three.latency_ms);
  EXPECT_GT(one.cancelled_queued_per_token, 0);
  // Never slower than non-SI, whatever SP (a chain-start task goes first).
  EXPECT_LE(one.latency_ms, in.t_ms * 1.001);
}

// Token trees in the i.i.d. model: a node's children hold the target's token when its
// drafter rank is within their number (rank 1 with probability a, rank r with ranks[r - 2]).
// SI with one level of b candidates commits 1 + P(rank <= b) tokens per verification; the text
// is the target's for SI and DSI; without ranks, siblings catch nothing.
TEST(IidSimulator, TreesCatchTheRanksTheyHold) {
  LatencyInputs in{.t_ms = 5, .c_ms = 0.5, .a = 0.5, .ranks = {0.2, 0.1}};
  const PlanOptions po{.tokens = 1000, .runs = 20};
  const double want[] = {1.5, 1.7, 1.8, 1.8};  // b = 1, 2, 3, 4 (rank 4 has probability 0)
  for (int b = 1; b <= 4; ++b) {
    const SimEstimate e = simulate_iid(Mode::kSi, in, 1, 1, po, {b});
    EXPECT_NEAR(e.tokens_per_verification, want[b - 1], 0.02) << "b = " << b;
  }
  LatencyInputs none = in;
  none.ranks.clear();
  EXPECT_NEAR(simulate_iid(Mode::kSi, none, 1, 1, po, {3}).tokens_per_verification, 1.5, 0.02);
  // Deeper trees, SI and DSI: the target's text, and faster than the chain of their depth.
  for (Mode mode : {Mode::kSi, Mode::kDsi}) {
    for (const std::vector<int>& tree : {std::vector<int>{3, 2, 1, 1}, std::vector<int>{2, 2}}) {
      SimConfig sc;
      sc.sched = {.mode = mode,
                  .lookahead = static_cast<int>(tree.size()),
                  .n_targets = 3,
                  .max_new_tokens = 200,
                  .tree = tree};
      sc.target = {.seed = 4, .vocab = 50, .forward_ms = 5};
      sc.drafter = {.seed = 4, .vocab = 50, .acceptance = 0.5, .forward_ms = 0.5, .drafter = true};
      sc.prompt = synthetic_prompt(4, 6, 50);
      sc.model = TokenModel::kIid;
      sc.iid_ranks = in.ranks;
      const SimResult r = simulate(sc);
      ASSERT_EQ(r.tokens, simulated_reference(sc)) << mode_name(mode) << " " << tree.size();
      const int k = static_cast<int>(tree.size());
      const int sp = mode == Mode::kDsi ? 3 : 1;
      EXPECT_LT(simulate_iid(mode, in, k, sp, po, tree).latency_ms,
                0.95 * simulate_iid(mode, in, k, sp, po).latency_ms)
          << mode_name(mode) << " tree of depth " << k;
    }
  }
}

TEST(Planner, ChoosesTreesWhenSiblingsCatchEnough) {
  LatencyInputs in{.t_ms = 5, .c_ms = 0.5, .a = 0.6};
  const PlanOptions po{.tokens = 400, .runs = 8};
  const std::vector<std::vector<int>> trees = {{3, 2, 1, 1}};
  // Siblings that catch a quarter of the misses: the tree beats the chain of its depth.
  in.ranks = {0.1};
  const auto with = recommend_trees(in, trees, 4, 0.01, po);
  ASSERT_EQ(with.size(), 1u);
  EXPECT_GE(with[0].sp, 1);
  EXPECT_LT(with[0].dsi_ms, 0.97 * simulate_iid(Mode::kDsi, in, 4, with[0].sp, po).latency_ms);
  EXPECT_LT(with[0].si_ms, simulate_iid(Mode::kSi, in, 4, 1, po).latency_ms);
}

TEST(Planner, RecommendsSmallestSpNearTheBest) {
  const LatencyInputs in{.t_ms = 20, .c_ms = 2, .a = 0.8};
  const PlanOptions opts{.tokens = 400, .runs = 4, .seed = 1};
  const auto t0 = std::chrono::steady_clock::now();
  const Recommendation r = recommend(in, 6, 8, 0.01, opts);
  const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_EQ(r.grid.size(), 48u);
  EXPECT_LE(r.recommended.sp, r.best.sp);
  EXPECT_LE(r.recommended.dsi_ms, r.best.dsi_ms * 1.01);
  EXPECT_LT(r.best.dsi_ms, r.si_ms);
  EXPECT_LT(r.si_ms, r.nonsi_ms);
  EXPECT_GE(r.recommended.sp, 2);
  EXPECT_LT(took, 30.0);
}

TEST(LatencyModel, ClosedFormsAtTheEdges) {
  const LatencyInputs in{.t_ms = 20, .c_ms = 2, .a = 1.0};
  EXPECT_DOUBLE_EQ(ideal_latency_ms(Mode::kDsi, in, 5), 2);
  EXPECT_DOUBLE_EQ(ideal_latency_ms(Mode::kSi, in, 4), (8 + 20) / 5.0);
  EXPECT_DOUBLE_EQ(ideal_latency_ms(Mode::kNonSi, in, 4), 20);
  LatencyInputs zero = in;
  zero.a = 0;
  EXPECT_DOUBLE_EQ(ideal_latency_ms(Mode::kDsi, zero, 5), 20);
  EXPECT_DOUBLE_EQ(ideal_latency_ms(Mode::kSi, zero, 5), 30);
  EXPECT_EQ(dsi_sp_needed(in, 5), 2);
  EXPECT_EQ(dsi_sp_needed(in, 1), 10);
}

}  // namespace
}  // namespace dsi
