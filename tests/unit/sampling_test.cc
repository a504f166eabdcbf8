// Lossless speculative sampling: the empirical distribution of the first generated tokens
// under DSI and SI matches target-only sampling (chi-square goodness of fit against the
// exact target probabilities), deliberately broken verifiers fail the same test, and DSI's
// output for a seed does not depend on SP or timing.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <map>

#include "common/rng.h"
#include "kernels/sampling.h"
#include "sim/simulator.h"
#include "tests/stats.h"

namespace dsi {
namespace {

TEST(Stats, ChiSquareTailMatchesKnownValues) {
  // P(chi2_df > x) = Q(df/2, x/2): chi2_1 > 3.841 is 0.05, chi2_10 > 18.307 is 0.05.
  EXPECT_NEAR(gamma_q(0.5, 3.841 / 2), 0.05, 1e-3);
  EXPECT_NEAR(gamma_q(5, 18.307 / 2), 0.05, 1e-3);
  EXPECT_NEAR(gamma_q(20, 10), 0.995, 2e-3);
}

struct Case {
  Mode mode;
  int k;
  int sp;
  SamplingParams sampling;
  VerifierVariant verifier = VerifierVariant::kCorrect;
};

constexpr int kVocab = 6;

SimConfig config_for(const Case& s, uint64_t sample_seed) {
  SimConfig cfg;
  cfg.sched = {.mode = s.mode, .lookahead = s.k, .n_targets = s.sp, .max_new_tokens = 2};
  cfg.target = {.seed = 42, .vocab = kVocab, .forward_ms = 10};
  cfg.drafter = {.seed = 42,
                 .vocab = kVocab,
                 .acceptance = 0.3,
                 .forward_ms = 1,
                 .drafter = true,
                 .overlap = 0.1};
  cfg.prompt = {1, 2, 3};
  cfg.sampling = s.sampling;
  cfg.sampling.seed = sample_seed;
  cfg.verifier = s.verifier;
  return cfg;
}

// p-value of the joint distribution of the tokens at positions `at` and `at` + 1 of the
// generation (0: the first two) over n generations, against the target's exact joint there
// (earlier tokens summed out).
double tokens_p_value(const Case& s, int n, int at = 0) {
  const SimConfig base = config_for(s, 0);
  std::map<std::pair<int, int>, int> counts;
  for (int i = 0; i < n; ++i) {
    SimConfig cfg = config_for(s, 1000 + i);
    cfg.sched.max_new_tokens = at + 2;
    const auto toks = simulate(cfg).tokens;
    ++counts[{toks[at], toks[at + 1]}];
  }
  // The exact joint of (t_at, t_at+1): every prefix of `at` tokens with its probability.
  std::map<std::pair<int, int>, double> expect;
  std::function<void(std::vector<Token>&, double)> walk = [&](std::vector<Token>& ctx, double w) {
    const auto pr = synthetic_probs(base.target, ctx, base.sampling);
    if (static_cast<int>(ctx.size() - base.prompt.size()) < at) {
      for (int a = 0; a < kVocab; ++a) {
        if (pr[a] <= 0) continue;
        ctx.push_back(a);
        walk(ctx, w * pr[a]);
        ctx.pop_back();
      }
      return;
    }
    for (int a = 0; a < kVocab; ++a) {
      if (pr[a] <= 0) continue;
      ctx.push_back(a);
      const auto p2 = synthetic_probs(base.target, ctx, base.sampling);
      for (int b = 0; b < kVocab; ++b) expect[{a, b}] += w * pr[a] * p2[b];
      ctx.pop_back();
    }
  };
  std::vector<Token> ctx = base.prompt;
  walk(ctx, 1.0);
  double chi2 = 0;
  int cells = 0;
  for (int a = 0; a < kVocab; ++a) {
    for (int b = 0; b < kVocab; ++b) {
      const double e = n * expect[{a, b}];
      if (e <= 0) {
        EXPECT_EQ((counts[{a, b}]), 0) << "a token outside the target's support was generated";
        continue;
      }
      const double d = counts[{a, b}] - e;
      chi2 += d * d / e;
      ++cells;
    }
  }
  return gamma_q((cells - 1) / 2.0, chi2 / 2);
}

double first_tokens_p_value(const Case& s, int n) {
  return tokens_p_value(s, n, 0);
}

// A false failure has probability 1e-4 per case; the broken verifiers give p-values many
// orders of magnitude below it.
constexpr double kAlpha = 1e-4;
constexpr int kRuns = 6000;

TEST(Sampling, DsiAndSiMatchTargetDistribution) {
  const SamplingParams t1{.temperature = 1.0f, .coupling = Coupling::kResidual};
  const SamplingParams t07{
      .temperature = 0.7f, .top_k = 4, .top_p = 0.9f, .coupling = Coupling::kResidual};
  for (const Case& s : {Case{Mode::kDsi, 3, 4, t1}, Case{Mode::kSi, 2, 1, t1},
                        Case{Mode::kDsi, 2, 2, t07}, Case{Mode::kNonSi, 1, 1, t1}}) {
    const double pv = first_tokens_p_value(s, kRuns);
    std::printf("  %s k=%d T=%.1f: p-value %.4g\n", mode_name(s.mode), s.k, s.sampling.temperature,
                pv);
    EXPECT_GT(pv, kAlpha) << mode_name(s.mode) << " k=" << s.k << " T=" << s.sampling.temperature;
  }
}

TEST(Sampling, BrokenVerifiersFailTheDistributionTest) {
  const SamplingParams t1{.temperature = 1.0f, .coupling = Coupling::kResidual};
  for (VerifierVariant v : {VerifierVariant::kAcceptInverted, VerifierVariant::kResidualFromP,
                            VerifierVariant::kResidualNoClamp}) {
    const double pv = first_tokens_p_value(Case{Mode::kSi, 2, 1, t1, v}, kRuns);
    std::printf("  broken verifier %d: p-value %.4g\n", static_cast<int>(v), pv);
    EXPECT_LT(pv, kAlpha) << "broken verifier " << static_cast<int>(v) << " went unnoticed";
  }
}

// Past the first chain: with k = 3 the tokens at 3 and 4 (a grid position decided by the
// target's own sample and the accept-tested one after it) and at 4 and 5, for DSI at SP 2 and
// 4, whose concurrent tasks cover those positions; both couplings. A DSI verifier that ignores
// the grid (so that which task decides a position depends on timing) fails it.
TEST(Sampling, LaterPositionsMatchTargetDistribution) {
  for (Coupling coupling : {Coupling::kResidual, Coupling::kGumbel}) {
    const SamplingParams t1{.temperature = 1.0f, .coupling = coupling};
    for (int sp : {2, 4}) {
      for (int at : {3, 4}) {
        const double pv = tokens_p_value(Case{Mode::kDsi, 3, sp, t1}, kRuns, at);
        std::printf("  %s DSI k=3 SP %d tokens %d,%d: p-value %.4g\n",
                    coupling == Coupling::kGumbel ? "gumbel" : "residual", sp, at, at + 1, pv);
        EXPECT_GT(pv, kAlpha) << "SP " << sp << " at " << at;
      }
    }
  }
  const SamplingParams r1{.temperature = 1.0f, .coupling = Coupling::kResidual};
  double worst = 1;
  for (int at : {3, 4}) {
    const double pv =
        tokens_p_value(Case{Mode::kDsi, 3, 4, r1, VerifierVariant::kNoGrid}, kRuns, at);
    std::printf("  broken grid, tokens %d,%d: p-value %.4g\n", at, at + 1, pv);
    worst = std::min(worst, pv);
  }
  EXPECT_LT(worst, kAlpha) << "a DSI verifier without the grid went unnoticed";
}

// The Gumbel coupling: every mode's first two tokens follow the target's joint distribution.
TEST(Sampling, GumbelCouplingMatchesTargetDistribution) {
  const SamplingParams t1{.temperature = 1.0f, .coupling = Coupling::kGumbel};
  const SamplingParams t07{
      .temperature = 0.7f, .top_k = 4, .top_p = 0.9f, .coupling = Coupling::kGumbel};
  for (const Case& s : {Case{Mode::kDsi, 3, 4, t1}, Case{Mode::kSi, 2, 1, t1},
                        Case{Mode::kDsi, 1, 2, t07}, Case{Mode::kNonSi, 1, 1, t1}}) {
    const double pv = first_tokens_p_value(s, kRuns);
    std::printf("  gumbel %s k=%d T=%.1f: p-value %.4g\n", mode_name(s.mode), s.k,
                s.sampling.temperature, pv);
    EXPECT_GT(pv, kAlpha) << mode_name(s.mode) << " k=" << s.k << " T=" << s.sampling.temperature;
  }
}

// Broken couplings fail it: the same race noise at every position (the two tokens are then
// dependent), and a verifier that trusts any draft the target could have produced.
TEST(Sampling, BrokenCouplingsFailTheDistributionTest) {
  const SamplingParams t1{.temperature = 1.0f, .coupling = Coupling::kGumbel};
  for (VerifierVariant v : {VerifierVariant::kRaceOnePosition, VerifierVariant::kRaceTrustDraft}) {
    const double pv = first_tokens_p_value(Case{Mode::kSi, 2, 1, t1, v}, kRuns);
    std::printf("  broken coupling %d: p-value %.4g\n", static_cast<int>(v), pv);
    EXPECT_LT(pv, kAlpha) << "broken coupling " << static_cast<int>(v) << " went unnoticed";
  }
}

// Under the Gumbel coupling the text is a function of the seed alone: non-SI, SI and DSI at
// every k and SP and drafter speed give the same tokens (5 seeds, 64 tokens), the ones of the
// reference non-SI sampler. Under the residual coupling the same grid gives texts that depend
// on k (checked too, so that this test cannot pass by accident of a weak drafter).
TEST(Sampling, GumbelTextIsTheSameForEveryModeKAndSp) {
  int residual_differs = 0;
  for (uint64_t seed : {1, 2, 3, 4, 5}) {
    for (Coupling coupling : {Coupling::kGumbel, Coupling::kResidual}) {
      const SamplingParams sp{.temperature = 0.8f, .seed = seed, .coupling = coupling};
      SyntheticParams target{.seed = 8, .vocab = 32, .forward_ms = 10};
      const std::vector<Token> prompt = {5, 6};
      const auto want = synthetic_sampled_reference(target, prompt, 64, sp);
      for (Mode mode : {Mode::kNonSi, Mode::kSi, Mode::kDsi}) {
        for (int k : {1, 3, 6}) {
          for (int n_targets : {1, 2, 3, 4}) {
            if (mode != Mode::kDsi && n_targets > 1) continue;
            for (double c : {0.5, 4.0}) {
              SimConfig cfg;
              cfg.sched = {
                  .mode = mode, .lookahead = k, .n_targets = n_targets, .max_new_tokens = 64};
              cfg.target = target;
              cfg.drafter = {
                  .seed = 8, .vocab = 32, .acceptance = 0.7, .forward_ms = c, .drafter = true};
              cfg.prompt = prompt;
              cfg.sampling = sp;
              const auto got = simulate(cfg).tokens;
              if (coupling == Coupling::kGumbel) {
                ASSERT_EQ(got, want) << "seed " << seed << " " << mode_name(mode) << " k " << k
                                     << " SP " << n_targets << " c " << c;
              } else {
                residual_differs += got != want;
              }
            }
          }
        }
      }
    }
  }
  EXPECT_GT(residual_differs, 0) << "the residual coupling's text never depended on k or mode";
}

TEST(Sampling, DsiOutputDependsOnlyOnSeedNotOnSpOrTiming) {
  for (uint64_t seed : {1, 2, 3}) {  // the residual coupling too, at a fixed k
    std::vector<Token> first;
    for (int sp = 1; sp <= 6; ++sp) {
      for (double c : {0.5, 3.0, 9.0}) {
        SimConfig cfg;
        cfg.sched = {.mode = Mode::kDsi, .lookahead = 3, .n_targets = sp, .max_new_tokens = 60};
        cfg.target = {.seed = 8, .vocab = 32, .forward_ms = 10};
        cfg.drafter = {.seed = 8, .vocab = 32, .acceptance = 0.7, .forward_ms = c, .drafter = true};
        cfg.prompt = {5, 6};
        cfg.sampling = {.temperature = 0.8f, .seed = seed, .coupling = Coupling::kResidual};
        const auto toks = simulate(cfg).tokens;
        if (first.empty()) first = toks;
        ASSERT_EQ(toks, first) << "seed " << seed << " sp " << sp << " c " << c;
      }
    }
  }
}

TEST(Sampling, PerfectDrafterReproducesNonSiText) {
  // q == p (a = 1, full overlap): every draft is the target's own sample, so DSI and SI
  // produce exactly the non-SI text for the seed.
  for (Mode mode : {Mode::kDsi, Mode::kSi}) {
    SimConfig cfg;
    cfg.sched = {.mode = mode, .lookahead = 4, .n_targets = 3, .max_new_tokens = 50};
    cfg.target = {.seed = 3, .vocab = 32, .forward_ms = 10};
    cfg.drafter = {.seed = 3,
                   .vocab = 32,
                   .acceptance = 1.0,
                   .forward_ms = 1,
                   .drafter = true,
                   .overlap = 1.0};
    cfg.prompt = {7};
    cfg.sampling = {.temperature = 1.0f, .seed = 11};
    EXPECT_EQ(simulate(cfg).tokens,
              synthetic_sampled_reference(cfg.target, cfg.prompt, 50, cfg.sampling))
        << mode_name(mode);
  }
}

TEST(Sampling, ProbsFromLogitsAppliesTemperatureTopKTopP) {
  const float logits[5] = {0, 1, 2, 3, 4};
  float p[5];
  kernels::probs_from_logits_cpu(p, logits, 5, 1.0f, 0, 1.0f);
  double s = 0;
  for (float v : p) s += v;
  EXPECT_NEAR(s, 1, 1e-6);
  EXPECT_NEAR(p[4] / p[3], std::exp(1.0), 1e-4);
  kernels::probs_from_logits_cpu(p, logits, 5, 1.0f, 2, 1.0f);
  EXPECT_EQ(p[0] + p[1] + p[2], 0);
  EXPECT_NEAR(p[3] + p[4], 1, 1e-6);
  kernels::probs_from_logits_cpu(p, logits, 5, 1.0f, 0, 0.5f);  // p[4] alone is 0.64
  EXPECT_NEAR(p[4], 1, 1e-6);
  EXPECT_EQ(kernels::sample_cdf_cpu(p, 5, 0.999), 4);
}

TEST(Sampling, RaceSampleIsAPureFunctionOfSeedAndPosition) {
  const std::vector<float> w = {0.1f, 0.0f, 0.5f, 0.25f, 0.15f, 0.0f};
  const SamplingParams sp{.temperature = 1.0f, .seed = 3};
  std::vector<int> counts(w.size());
  for (int pos = 0; pos < 40000; ++pos) {
    const Token t = race_sample(w, pos, sp);
    ASSERT_EQ(t, race_sample(w, pos, sp));
    ++counts[t];
  }
  EXPECT_EQ(counts[1] + counts[5], 0) << "a zero weight won a race";
  for (size_t i = 0; i < w.size(); ++i) EXPECT_NEAR(counts[i] / 40000.0, w[i], 0.01) << i;
  // Scale does not matter; the seed does.
  std::vector<float> w3(w);
  for (float& x : w3) x *= 3;
  int differs = 0;
  for (int pos = 0; pos < 200; ++pos) {
    EXPECT_EQ(race_sample(w3, pos, sp), race_sample(w, pos, sp));
    differs += race_sample(w, pos, {.temperature = 1.0f, .seed = 4}) != race_sample(w, pos, sp);
  }
  EXPECT_GT(differs, 50);
}

TEST(Sampling, CounterRngIsAPureFunctionOfItsKey) {
  EXPECT_EQ(rng_uniform(1, 2, 3, RngPurpose::kAccept), rng_uniform(1, 2, 3, RngPurpose::kAccept));
  EXPECT_NE(rng_uniform(1, 2, 3, RngPurpose::kAccept), rng_uniform(1, 2, 3, RngPurpose::kSample));
  EXPECT_NE(rng_uniform(1, 2, 3, RngPurpose::kAccept), rng_uniform(1, 2, 4, RngPurpose::kAccept));
  double mean = 0;
  for (int i = 0; i < 100000; ++i) mean += rng_uniform(9, 0, i, RngPurpose::kSample);
  EXPECT_NEAR(mean / 100000, 0.5, 0.005);
}

}  // namespace
}  // namespace dsi
