// Verification of a draft sequence by the target: greedy (the target's argmax at every
// position) and speculative sampling (Leviathan et al.; Chen et al.), with every random draw
// keyed by position (common/rng.h) so that the decision at a position is a pure function of
// its context, whichever task or rank makes it. docs/sampling.md gives the argument.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "engines/engine.h"

namespace dsi {

struct SamplingParams {
  float temperature = 0;  // 0: greedy
  int top_k = 0;          // 0: no limit
  float top_p = 1;
  uint64_t seed = 1;
  uint64_t request = 0;
  bool greedy() const { return temperature <= 0; }
  bool operator==(const SamplingParams&) const = default;
};

// The positions whose token is the target's own sample from p (the "bonus" kind) rather than
// the accept test of a draft: the last position of every verification, and in DSI every
// position anchor + i * period (i >= 0). DSI tasks end on that grid, so whichever task
// decides a position decides it the same way.
struct BonusRule {
  int anchor = -1;
  int period = 0;  // 0: only the last position
  bool is_bonus(int pos, int end) const {
    return pos == end || (period > 0 && pos >= anchor && (pos - anchor) % period == 0);
  }
};

// Deliberately wrong verifiers, for the test that shows the distribution test can fail.
enum class VerifierVariant {
  kCorrect,
  kAcceptInverted,   // broken: accepts with min(1, q/p)
  kResidualFromP,    // broken: corrects from p instead of norm(max(0, p - q))
  kResidualNoClamp,  // broken: corrects from norm(|p - q|)
};

// Sampling probabilities (temperature, top-k, top-p) of one row of logits.
std::vector<float> sampling_probs(std::span<const float> logits, const SamplingParams& sp);

// The drafter's token at `pos` from its probabilities q.
Token draft_sample(std::span<const float> q, int pos, const SamplingParams& sp);

// Decides positions first .. seq.size() of a verification of `seq` (its drafts are
// seq[first .. size)). p(pos) gives the target's probabilities at pos, q(pos) the drafter's
// probabilities for the draft seq[pos] (asked only for accept tests). Returns one token per
// position up to and including the first one that differs from the draft; -1 after it.
std::vector<Token> verify_sampled(std::span<const Token> seq, int first,
                                  const std::function<std::span<const float>(int)>& p,
                                  const std::function<std::span<const float>(int)>& q,
                                  BonusRule rule, const SamplingParams& sp,
                                  VerifierVariant variant = VerifierVariant::kCorrect);

}  // namespace dsi
