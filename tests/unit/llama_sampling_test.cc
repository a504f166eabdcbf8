// Speculative sampling with a real (small) model: the target is a random llama of the tiny
// shape with a 32000-token vocabulary (tests/test_data.h), the drafter the same file with
// layer 2 skipped. Over 20000 seeds the token decided at
// the first generated position by the accept test / residual path follows the target's p
// exactly (chi-square at 1e-4), and a broken verifier fails the same test.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "../test_data.h"
#include "core/verify.h"
#include "engines/llama/llama_engine.h"

namespace dsi {
namespace {

double chi2_p_value(double chi2, int df) {
  // Wilson-Hilferty: chi2_df ~ df * (1 - 2/(9 df) + z sqrt(2/(9 df)))^3.
  const double z = (std::cbrt(chi2 / df) - (1 - 2.0 / (9 * df))) / std::sqrt(2.0 / (9 * df));
  return 0.5 * std::erfc(z / std::sqrt(2.0));
}

struct Dists {
  std::vector<float> p, q;
};

Dists first_position(const SamplingParams& sp, std::vector<int> layers) {
  RandomModelSpec spec = test::tiny_spec();
  spec.n_vocab = 32000;
  const std::string model = test::written_model(spec, "tiny-f16-v32000");
  auto target = make_llama_engine({.model_path = model});
  auto drafter = make_llama_engine({.model_path = model, .layers = layers});
  const std::vector<Token> prompt = {1, 450, 4996, 17354, 1701, 432};
  CancelFlag never;
  Logits lp = target->forward(prompt, 1, never), lq = drafter->forward(prompt, 1, never);
  return {sampling_probs(lp.row(0), sp), sampling_probs(lq.row(0), sp)};
}

double p_value(const Dists& d, const SamplingParams& base, VerifierVariant v, int n) {
  std::vector<int> counts(d.p.size());
  const std::vector<Token> prompt(6, 0);  // only its length matters to the verifier
  int rejected = 0;
  for (int i = 0; i < n; ++i) {
    SamplingParams sp = base;
    sp.seed = 5000 + i;
    const int pos = static_cast<int>(prompt.size());
    std::vector<Token> seq = prompt;
    seq.push_back(draft_sample(d.q, pos, sp));
    // SI-style: the draft at `pos` is accept-tested; the next position is the bonus.
    const auto y = verify_sampled(
        seq, pos, [&](int) { return std::span<const float>(d.p); },
        [&](int) { return std::span<const float>(d.q); }, BonusRule{}, sp, v);
    ++counts[y[0]];
    rejected += y[0] != seq[pos];
  }
  EXPECT_GT(rejected, n / 20) << "the drafter must disagree often enough to test the correction";
  std::printf("  %s coupling, verifier %d: acceptance %.3f\n",
              base.coupling == Coupling::kGumbel ? "gumbel" : "residual", static_cast<int>(v),
              1.0 - double(rejected) / n);
  double chi2 = 0;
  int cells = 0;
  for (size_t t = 0; t < d.p.size(); ++t) {
    if (d.p[t] <= 0) {
      EXPECT_EQ(counts[t], 0) << "token " << t << " is outside the target's support";
      continue;
    }
    const double e = n * d.p[t];
    chi2 += (counts[t] - e) * (counts[t] - e) / e;
    ++cells;
  }
  return chi2_p_value(chi2, cells - 1);
}

// Both couplings on a real (random-weight) llama pair, the drafter skipping layers: the first
// token follows p, and a broken verifier of each fails the test. The printed acceptance rates
// compare the couplings (the residual one is optimal: sum min(p, q)).
TEST(LlamaSampling, FirstTokenFollowsTargetDistribution) {
  for (Coupling coupling : {Coupling::kResidual, Coupling::kGumbel}) {
    for (SamplingParams sp : {SamplingParams{.temperature = 1.0f, .top_k = 12},
                              SamplingParams{.temperature = 0.7f, .top_k = 40, .top_p = 0.9f}}) {
      sp.coupling = coupling;
      const Dists d = first_position(sp, {0, 1, 3});
      double overlap = 0;
      for (size_t t = 0; t < d.p.size(); ++t) overlap += std::min(d.p[t], d.q[t]);
      std::printf("  overlap sum min(p, q) = %.3f\n", overlap);
      const double pv = p_value(d, sp, VerifierVariant::kCorrect, 20000);
      std::printf("  T=%.1f top_k=%d: p-value %.3g\n", sp.temperature, sp.top_k, pv);
      EXPECT_GT(pv, 1e-4);
      const VerifierVariant bad = coupling == Coupling::kGumbel ? VerifierVariant::kRaceTrustDraft
                                                                : VerifierVariant::kResidualFromP;
      const double broken = p_value(d, sp, bad, 20000);
      std::printf("  broken verifier %d: p-value %.3g\n", static_cast<int>(bad), broken);
      EXPECT_LT(broken, 1e-4);
    }
  }
}

}  // namespace
}  // namespace dsi
