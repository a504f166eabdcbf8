#include "core/verify.h"

#include <algorithm>
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

Token race_sample(std::span<const float> w, int pos, const SamplingParams& sp) {
  // Exponential race: token i finishes at E_i / w_i with E_i = -log(U_i) ~ Exp(1), and the
  // first to finish is token i with probability w_i / sum(w) (the Gumbel-max trick, as
  // argmax log w_i + G_i with G_i = -log E_i). U_i is the 32-bit word of token i, centred in
  // its cell so that neither 0 nor 1 occurs. Ties (measure zero) go to the lowest index.
  const int n = static_cast<int>(w.size());
  Token best = -1;
  double best_time = 0;
  for (int b = 0; b * 4 < n; ++b) {
    const int lo = b * 4, hi = std::min(n, lo + 4);
    bool any = false;
    for (int i = lo; i < hi; ++i) any = any || w[i] > 0;
    if (!any) continue;
    const auto words = rng_words(sp.seed, sp.request, static_cast<uint32_t>(pos), RngPurpose::kRace,
                                 static_cast<uint32_t>(b));
    for (int i = lo; i < hi; ++i) {
      if (!(w[i] > 0)) continue;
      const double u = (static_cast<double>(words[i - lo]) + 0.5) * 0x1.0p-32;
      // -log(u) >= 1 - u, and by a relative margin of at least (1 - u) / 2 >= 2^-34, far
      // above the roundings here (2^-52): a token whose bound cannot beat the best is skipped
      // without its logarithm, and the winner is the one the full computation picks.
      if (best >= 0 && 1.0 - u >= best_time * w[i]) continue;
      const double t = -std::log(u) / w[i];
      if (best < 0 || t < best_time) {
        best = i;
        best_time = t;
      }
    }
  }
  return best < 0 ? 0 : best;  // no positive weight: cannot happen for a sampling distribution
}

Token draft_sample(std::span<const float> q, int pos, const SamplingParams& sp) {
  // The same draw as the target's own sample at this position: a drafter with q == p
  // proposes exactly the token non-SI decoding would produce.
  if (sp.coupling == Coupling::kGumbel) return race_sample(q, pos, sp);
  return sample(q, pos, sp, RngPurpose::kSample);
}

std::vector<Token> verify_sampled(std::span<const Token> seq, int first,
                                  const std::function<std::span<const float>(int)>& p,
                                  const std::function<std::span<const float>(int)>& q,
                                  BonusRule rule, const SamplingParams& sp,
                                  VerifierVariant variant) {
  const int end = static_cast<int>(seq.size());
  std::vector<Token> out(end - first + 1, -1);
  if (sp.coupling == Coupling::kGumbel) {
    // Every position is the target's own race, compared with the draft as in greedy: the
    // decided token does not depend on the draft, the grid or which task decides.
    for (int pos = first; pos <= end; ++pos) {
      const auto pp = p(pos);
      Token tok;
      if (variant == VerifierVariant::kRaceTrustDraft && pos < end && pp[seq[pos]] > 0) {
        tok = seq[pos];
      } else {
        tok = race_sample(pp, variant == VerifierVariant::kRaceOnePosition ? 0 : pos, sp);
      }
      out[pos - first] = tok;
      if (pos < end && tok != seq[pos]) break;
    }
    return out;
  }
  if (variant == VerifierVariant::kNoGrid) rule.period = 0;
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

TreeVerdict verify_tree_exact(const TokenTree& tree, const std::function<Token(int)>& target) {
  TreeVerdict v;
  int cur = -1;
  for (;;) {
    const Token y = target(cur);
    int next = -1;
    for (int c : tree.children(cur)) {
      if (tree.tokens[c] == y) {
        next = c;
        break;
      }
    }
    if (next < 0) {
      v.next = y;
      return v;
    }
    v.path.push_back(next);
    cur = next;
  }
}

TreeVerdict verify_tree_sampled(const TokenTree& tree, int first,
                                const std::function<std::span<const float>(int)>& p,
                                const std::function<std::span<const float>(int)>& q,
                                const SamplingParams& sp, TreeVariant variant) {
  auto pos_after = [&](int node) { return node < 0 ? first : first + tree.depth(node) + 1; };
  if (sp.coupling == Coupling::kGumbel) {
    return verify_tree_exact(tree,
                             [&](int node) { return race_sample(p(node), pos_after(node), sp); });
  }
  TreeVerdict v;
  int cur = -1;
  for (;;) {
    const int pos = pos_after(cur);
    const auto children = tree.children(cur);
    const auto pp = p(cur);
    if (children.empty()) {
      v.next = sample(pp, pos, sp, RngPurpose::kSample);
      return v;
    }
    const auto qq = q(cur);
    // The residual r / mass, kept unnormalised as verify_sampled keeps it: p itself counts as
    // mass 1, so a chain makes the same comparisons and draws with the same bits.
    std::vector<float> r(pp.begin(), pp.end());
    double mass = 1;
    int accepted = -1;
    for (size_t j = 0; j < children.size() && accepted < 0; ++j) {
      const Token x = tree.tokens[children[j]];
      // The first sibling draws as a chain's draft does.
      const double u = j == 0 ? rng_uniform(sp.seed, sp.request, pos, RngPurpose::kAccept)
                              : rng_uniform_at(sp.seed, sp.request, static_cast<uint32_t>(pos),
                                               RngPurpose::kAccept, static_cast<uint32_t>(j));
      const bool accept = variant == TreeVariant::kNoResidualUpdate
                              ? u * qq[x] < pp[x]
                              : u * qq[x] * mass < r[x];  // u < min(1, (r(x) / mass) / q(x))
      if (accept) {
        accepted = children[j];
        break;
      }
      const float m = static_cast<float>(mass);
      double left = 0;
      for (size_t i = 0; i < r.size(); ++i) {
        const float d = r[i] - m * qq[i];
        r[i] = d > 0 ? d : 0;
        left += r[i];
      }
      // r == q leaves nothing: that rejection had probability 0 (verify_sampled keeps the draft).
      if (!(left > 0)) accepted = children[j];
      mass = left;
    }
    if (accepted < 0) {
      v.next = sample(r, pos, sp, RngPurpose::kResidual);
      return v;
    }
    v.path.push_back(accepted);
    cur = accepted;
  }
}

}  // namespace dsi
