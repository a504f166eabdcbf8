// Adaptive speculation (core/adapt.h): the online estimates, the policy's choices and probes,
// that no plan changes a token (random plans at every chain boundary, greedy and sampled), and
// that on a run whose acceptance drifts 0.9 -> 0.2 -> 0.9 the policy is within 5% of the best
// fixed configuration chosen in hindsight for each phase, and never 3% slower than non-SI
// (the simulator, in virtual time: deterministic).
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <random>

#include "core/adapt.h"
#include "sim/simulator.h"

namespace dsi {
namespace {

// Acceptance counters as the scheduler keeps them: n drafts at position 0, m accepted.
SchedulerStats checked(int64_t accepted, int64_t rejected) {
  SchedulerStats s;
  s.drafts_accepted = s.accepted_at[0] = accepted;
  s.drafts_rejected = s.rejected_at[0] = rejected;
  return s;
}

TEST(Adapter, EstimatesFollowTheObservations) {
  Adapter a({.n_targets = 2}, {.mode = Mode::kDsi, .lookahead = 4, .sp = 2});
  for (int i = 0; i < 20; ++i) {
    a.forward(1, 0.012);  // 10 ms + 2 ms per token
    a.forward(5, 0.020);
    a.draft(0.001);
  }
  a.checked(checked(30, 10));
  const auto& e = a.estimates();
  EXPECT_NEAR(e.t0_ms, 10, 1e-6);
  EXPECT_NEAR(e.t1_ms, 2, 1e-6);
  EXPECT_NEAR(e.c_ms, 1, 1e-9);
  EXPECT_NEAR(e.a, 0.75, 1e-9);
  EXPECT_NEAR(e.a_at[0], 0.75, 1e-9);
  // The acceptance forgets: after many rejections it falls towards 0.
  a.checked(checked(30, 10 + 400));
  EXPECT_LT(a.estimates().a, 0.01);
}

TEST(Adapter, PredictsWithTheClosedFormsAndTheTargetsThroughput) {
  const LatencyInputs in{.t_ms = 10, .c_ms = 1, .a = 0.8};
  EXPECT_DOUBLE_EQ(predict_ms({.mode = Mode::kNonSi, .lookahead = 3, .sp = 1}, in), 10);
  EXPECT_DOUBLE_EQ(predict_ms({.mode = Mode::kSi, .lookahead = 3, .sp = 1}, in),
                   ideal_latency_ms(Mode::kSi, in, 3));
  // DSI on ample targets: the closed form; on one target it cannot beat T / (tokens per task).
  // DSI on ample targets: the closed form (up to the truncation of long chains); on one
  // target the tasks wait for it, which costs more than 20% here.
  const double ample = predict_ms({.mode = Mode::kDsi, .lookahead = 2, .sp = 8}, in);
  EXPECT_NEAR(ample, ideal_latency_ms(Mode::kDsi, in, 2), 0.005 * ample);
  const double one = predict_ms({.mode = Mode::kDsi, .lookahead = 2, .sp = 1}, in);
  EXPECT_GT(one, 1.2 * ample);
  // A free drafter (c = 0) or a tiny one still gives a finite schedule, quickly.
  for (double c : {0.0, 1e-9}) {
    const double ms = predict_ms({.mode = Mode::kDsi, .lookahead = 1, .sp = 2},
                                 {.t_ms = 10, .c_ms = c, .a = 0.999});
    EXPECT_GT(ms, 0) << c;
    EXPECT_LT(ms, 10) << c;
  }
  // Never slower than non-SI (the chain's first task is a non-SI step), and a = 1 runs at
  // the drafter's pace.
  EXPECT_LE(
      predict_ms({.mode = Mode::kDsi, .lookahead = 2, .sp = 1}, {.t_ms = 10, .c_ms = 1, .a = 0}),
      10 + 1e-9);
  EXPECT_DOUBLE_EQ(
      predict_ms({.mode = Mode::kDsi, .lookahead = 2, .sp = 1}, {.t_ms = 10, .c_ms = 1, .a = 1}),
      1);
}

// Runs the adapter through boundaries, each after `tokens` tokens that took `ms_per_token`
// times the prediction for the mode running (its "speed"), with acceptance a.
struct Driver {
  Adapter ad;
  double now = 0;
  double lost_s = 0;  // speculative time beyond what non-SI would have taken
  int gen = 0;
  int64_t acc = 0, rej = 0;
  ChainPlan cur;
  explicit Driver(AdaptOptions o, ChainPlan p) : ad(o, p), cur(p) { cur = ad.plan(0, 0); }
  void step(int tokens, double a, std::array<double, 3> speed) {
    for (int i = 0; i < 4; ++i) ad.forward(i == 0 ? 1 : cur.lookahead + 1, 0.010);
    ad.draft(0.001);
    // drafts checked in this segment
    const int n = 20;
    acc += static_cast<int64_t>(a * n + 0.5);
    rej += n - static_cast<int64_t>(a * n + 0.5);
    ad.checked(checked(acc, rej));
    const double ms = predict_ms(cur, ad.estimates().inputs()) * speed[static_cast<int>(cur.mode)];
    const ChainPlan nonsi{.mode = Mode::kNonSi, .lookahead = 1, .sp = 1};
    const double nonsi_ms = predict_ms(nonsi, ad.estimates().inputs()) * speed[0];
    if (cur.mode != Mode::kNonSi) lost_s += tokens * std::max(0.0, ms - nonsi_ms) / 1e3;
    now += tokens * ms / 1e3;
    gen += tokens;
    cur = ad.plan(now, gen);
  }
};

TEST(Adapter, LeavesAModeThatRunsSlowerThanPredictedAndProbesItLater) {
  // probe_budget 1: the gaps double from probe_tokens (the budget's gap is shorter).
  AdaptOptions o{
      .n_targets = 2, .probe_tokens = 32, .probe_max = 128, .probe_budget = 1, .window_tokens = 16};
  Driver d(o, {.mode = Mode::kDsi, .lookahead = 4, .sp = 2});
  // DSI and SI run at twice their predicted latency (contention): non-SI wins. (By Mode:
  // non-SI, SI, DSI.)
  const std::array<double, 3> slow_spec{1.0, 2.0, 2.0};
  // It first times non-SI for a few tokens (non-SI is predicted from DSI's forwards until
  // then), measures speculation, and settles on non-SI.
  auto settled = [&] {
    const auto& why = d.ad.decisions().back().why;
    return d.cur.mode == Mode::kNonSi && why != "measure non-SI";
  };
  for (int i = 0; i < 40 && !settled(); ++i) d.step(8, 0.5, slow_spec);
  ASSERT_TRUE(settled());
  EXPECT_EQ(d.ad.decisions().at(1).why, "measure non-SI");
  // Non-SI steps one token per boundary; after probe_tokens of them a probe of speculation.
  int probes = 0, since = 0;
  std::vector<int> gaps;
  for (int i = 0; i < 600; ++i) {
    const bool was_nonsi = d.cur.mode == Mode::kNonSi;
    d.step(1, 0.5, slow_spec);
    if (was_nonsi) ++since;
    if (was_nonsi && d.cur.mode != Mode::kNonSi) {
      ++probes;
      gaps.push_back(since);
      since = 0;
    }
  }
  ASSERT_GE(probes, 3);
  EXPECT_EQ(d.ad.decisions().back().plan.mode, Mode::kNonSi);
  // Each lost probe doubles the gap up to probe_max.
  EXPECT_EQ(gaps[0], 32);
  EXPECT_EQ(gaps[1], 64);
  EXPECT_EQ(gaps[2], 128);
  if (gaps.size() > 3) {
    EXPECT_EQ(gaps[3], 128);
  }
  // When speculation runs as predicted again, the next probe wins and it stays.
  for (int i = 0; i < 400; ++i) d.step(1, 0.9, {1.0, 1.0, 1.0});
  EXPECT_NE(d.cur.mode, Mode::kNonSi);
}

TEST(Adapter, LostProbesCostAtMostTheProbeBudget) {
  // Speculation runs twice as slow as predicted: every probe loses. Over the 300 tokens after
  // it settles on non-SI (a short run, where the doubling gaps alone still probe often), the
  // time the probes lose against non-SI stays under the budget, which binds: without it the
  // probes lose more.
  auto lost_share = [](double budget) {
    AdaptOptions o{.n_targets = 2, .probe_budget = budget};
    Driver d(o, {.mode = Mode::kDsi, .lookahead = 4, .sp = 2});
    const std::array<double, 3> slow_spec{1.0, 2.0, 2.0};
    for (int i = 0; i < 40; ++i) d.step(8, 0.5, slow_spec);
    EXPECT_EQ(d.cur.mode, Mode::kNonSi);
    const double t0 = d.now, lost0 = d.lost_s;
    for (int i = 0; i < 300; ++i) d.step(1, 0.5, slow_spec);
    return (d.lost_s - lost0) / (d.now - t0);
  };
  const double share = lost_share(0.03);
  EXPECT_GT(share, 0);  // it still probes
  EXPECT_LE(share, 0.03);
  EXPECT_GT(lost_share(1.0), 1.5 * share) << share;
}

TEST(Adapter, ChoosesALongerLookaheadAsAcceptanceRises) {
  AdaptOptions o{.n_targets = 4};
  Driver lo(o, {.mode = Mode::kDsi, .lookahead = 5, .sp = 4});
  Driver hi(o, {.mode = Mode::kDsi, .lookahead = 5, .sp = 4});
  for (int i = 0; i < 20; ++i) {
    lo.step(8, 0.3, {1, 1, 1});
    hi.step(8, 0.95, {1, 1, 1});
  }
  EXPECT_EQ(hi.cur.mode, Mode::kDsi);
  EXPECT_GT(hi.cur.lookahead, lo.cur.lookahead);
}

// A planner that picks a random plan at every boundary.
Scheduler::Planner random_planner(uint64_t seed, int n_targets) {
  auto rng = std::make_shared<std::mt19937_64>(seed);
  return [rng, n_targets] {
    std::uniform_int_distribution<int> mode(0, 2), k(1, 6), sp(1, n_targets);
    const Mode m = static_cast<Mode>(mode(*rng));
    return ChainPlan{.mode = m, .lookahead = k(*rng), .sp = m == Mode::kDsi ? sp(*rng) : 1};
  };
}

TEST(AdaptiveSim, RandomPlansAtEveryBoundaryNeverChangeAToken) {
  for (uint64_t seed = 1; seed <= 5; ++seed) {
    for (double temp : {0.0, 0.8}) {
      SimConfig sc;
      sc.sched = {.mode = Mode::kDsi, .lookahead = 3, .n_targets = 3, .max_new_tokens = 64};
      sc.target = {.seed = seed, .vocab = 40, .forward_ms = 10};
      sc.drafter = {.seed = seed,
                    .vocab = 40,
                    .acceptance = 0.7,
                    .forward_ms = 1,
                    .drafter = true,
                    .overlap = 0.8};
      sc.prompt = synthetic_prompt(seed, 5, 40);
      if (temp > 0) sc.sampling = {.temperature = static_cast<float>(temp), .seed = seed};
      sc.planner = random_planner(seed, 3);
      const SimResult r = simulate(sc);
      const auto ref = temp > 0 ? synthetic_sampled_reference(sc.target, sc.prompt, 64, sc.sampling)
                                : synthetic_reference(sc.target, sc.prompt, 64);
      ASSERT_EQ(r.tokens, ref) << "seed " << seed << " T " << temp;
      EXPECT_GT(r.stats.plan_changes, 5) << "the planner was not asked";
    }
  }
}

// Generated tokens per phase, and when each phase ended in a run (its commit times).
double phase_ms(const SimResult& r, int phase, int per_phase) {
  const double begin = phase == 0 ? 0 : r.commit_ms.at(phase * per_phase - 1);
  return r.commit_ms.at((phase + 1) * per_phase - 1) - begin;
}

// One target or two, a fast drafter or a slow one (c = 0.5: SI and DSI gain little).
class AdaptiveDrift : public ::testing::TestWithParam<std::tuple<int, double>> {};

TEST_P(AdaptiveDrift, IsNearTheBestFixedPlanOfEachPhase) {
  constexpr int kPerPhase = 200, kPhases = 3;
  const auto [kSp, c] = GetParam();
  RunConfig cfg;
  cfg.t_ms = cfg.ttft_ms = 10;
  cfg.c = c;
  cfg.a_phases = {0.9, 0.2, 0.9};
  cfg.phase_tokens = kPerPhase;
  cfg.max_new_tokens = kPerPhase * kPhases;
  cfg.vocab = 1000;  // a wrong draft never equals the target's token by chance
  struct Fixed {
    std::string name;
    SimResult r;
  };
  std::vector<Fixed> fixed;
  auto run = [&](Mode m, int k, int sp, bool adapt) {
    RunConfig c = cfg;
    c.mode = m;
    c.lookahead = k;
    SimConfig sc = sim_config(c, sp);
    if (adapt) sc.adapt = AdaptOptions{.n_targets = sp};
    SimResult r = simulate(sc);
    EXPECT_EQ(r.tokens, simulated_reference(sc)) << mode_name(m) << " k " << k << " sp " << sp;
    return r;
  };
  fixed.push_back({"nonsi", run(Mode::kNonSi, 1, 1, false)});
  for (int k = 1; k <= 8; ++k) {
    fixed.push_back({fmt::format("si k{}", k), run(Mode::kSi, k, 1, false)});
    for (int sp = 1; sp <= kSp; ++sp) {
      fixed.push_back({fmt::format("dsi k{} sp{}", k, sp), run(Mode::kDsi, k, sp, false)});
    }
  }
  const SimResult ad = run(Mode::kDsi, 5, kSp, true);
  double oracle = 0;
  for (int ph = 0; ph < kPhases; ++ph) {
    const Fixed* best = &fixed[0];
    for (const auto& f : fixed) {
      if (phase_ms(f.r, ph, kPerPhase) < phase_ms(best->r, ph, kPerPhase)) best = &f;
    }
    oracle += phase_ms(best->r, ph, kPerPhase);
    std::cout << fmt::format("phase {} (a {}): best fixed {} {:.1f} ms, adaptive {:.1f} ms\n", ph,
                             cfg.a_phases[ph], best->name, phase_ms(best->r, ph, kPerPhase),
                             phase_ms(ad, ph, kPerPhase));
  }
  const double nonsi = fixed[0].r.total_ms;
  std::cout << fmt::format(
      "adaptive {:.1f} ms, hindsight best {:.1f} ms ({:.3f}), non-SI {:.1f} ms "
      "({:.3f}); {} decisions, tokens by mode nonsi {} si {} dsi {}\n",
      ad.total_ms, oracle, ad.total_ms / oracle, nonsi, ad.total_ms / nonsi, ad.adapt.size(),
      ad.tokens_by_mode[0], ad.tokens_by_mode[1], ad.tokens_by_mode[2]);
  for (const auto& d : ad.adapt) {
    std::cout << fmt::format(
        "  at {:4} {:10} {:>5} k{} sp{} pred {:.2f} a {:.2f} c {:.2f} t {:.2f}+{:.2f} "
        "speed {:.2f} {:.2f} {:.2f}\n",
        d.generated, d.why, mode_name(d.plan.mode), d.plan.lookahead, d.plan.sp, d.predicted_ms,
        d.est.a, d.est.c_ms, d.est.t0_ms, d.est.t1_ms, d.est.speed[0], d.est.speed[1],
        d.est.speed[2]);
  }
  EXPECT_LE(ad.total_ms, 1.05 * oracle);
  EXPECT_LE(ad.total_ms, 1.03 * nonsi);
}

INSTANTIATE_TEST_SUITE_P(AdaptiveSim, AdaptiveDrift,
                         ::testing::Combine(::testing::Values(1, 2), ::testing::Values(0.15, 0.5)));

}  // namespace
}  // namespace dsi
