#include "core/verify.h"

#include <cmath>

#include "common/rng.h"
#include "kernels/sampling.h"

namespace dsi {

std::vector<float> sampling_probs(std::span<const float> logits, const SamplingParams& sp) {
  std::vector<float> probs(logits.size());
  kernels::probs_from_logits_cpu(probs.data(), logits.data(), static_cast<int>(logits.size()),
                                 sp.temperature, sp.top_k, sp.top_p);
  return probs;
}

namespace {
Token sample(std::span<const float> w, int pos, const SamplingParams& sp, RngPurpose purpose) {
  return kernels::sample_cdf_cpu(w.data(), static_cast<int>(w.size()),
                                 rng_uniform(sp.seed, sp.request, pos, purpose));
}
}  // namespace

Token draft_sample(std::span<const float> q, int pos, const SamplingParams& sp) {
  // The same draw as the target's own sample at this position: a drafter with q == p
  // proposes exactly the token non-SI decoding would produce.
  return sample(q, pos, sp, RngPurpose::kSample);
}

std::vector<Token> verify_sampled(std::span<const Token> seq, int first,
                                  const std::function<std::span<const float>(int)>& p,
                                  const std::function<std::span<const float>(int)>& q,
                                  BonusRule rule, const SamplingParams& sp,
                                  VerifierVariant variant) {
  const int end = static_cast<int>(seq.size());
  std::vector<Token> out(end - first + 1, -1);
  for (int pos = first; pos <= end; ++pos) {
    const auto pp = p(pos);
    Token tok;
    if (rule.is_bonus(pos, end)) {
      tok = sample(pp, pos, sp, RngPurpose::kSample);
    } else {
      const Token x = seq[pos];
      const auto qq = q(pos);
      const double u = rng_uniform(sp.seed, sp.request, pos, RngPurpose::kAccept);
      const double px = pp[x], qx = qq[x];
      const bool accept = variant == VerifierVariant::kAcceptInverted
                              ? u * px < qx
                              : u * qx < px;  // u < min(1, p/q) without dividing
      if (accept) {
        tok = x;
      } else {
        std::vector<float> w(pp.size());
        double mass = 0;
        for (size_t i = 0; i < w.size(); ++i) {
          const float d = pp[i] - qq[i];
          switch (variant) {
            case VerifierVariant::kResidualFromP:
              w[i] = pp[i];
              break;
            case VerifierVariant::kResidualNoClamp:
              w[i] = std::fabs(d);
              break;
            default:
              w[i] = d > 0 ? d : 0;
              break;
          }
          mass += w[i];
        }
        // p == q leaves no residual mass; a rejection then has probability 0 anyway.
        tok = mass > 0 ? sample(w, pos, sp, RngPurpose::kResidual) : x;
      }
    }
    out[pos - first] = tok;
    if (pos < end && tok != seq[pos]) break;
  }
  return out;
}

}  // namespace dsi
