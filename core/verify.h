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

// How the drafter's and the target's draws are coupled (docs/sampling.md).
//  kGumbel: both take the token of the same per-position race (Gumbel-max in product form:
//    argmin over tokens of E_i / w_i, E_i exponential noise keyed by (seed, request, position,
//    token)); a draft is accepted when it equals the target's, so every mode, k, SP and
//    timing gives the non-SI text of the seed, each token distributed as p.
//  kResidual: the drafter samples q by inverse CDF, the target accepts with min(1, p/q) and
//    corrects from norm(max(0, p - q)) (Leviathan et al.): the most accepted drafts, but the
//    text of a seed depends on k (the grid of positions the target decides).
enum class Coupling : int { kGumbel = 0, kResidual = 1 };

struct SamplingParams {
  float temperature = 0;  // 0: greedy
  int top_k = 0;          // 0: no limit
  float top_p = 1;
  uint64_t seed = 1;
  uint64_t request = 0;
  Coupling coupling = Coupling::kGumbel;
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
  kNoGrid,           // broken (residual, DSI): ignores the grid (BonusRule's period)
  kRaceOnePosition,  // broken (Gumbel): the race noise of position 0 at every position
  kRaceTrustDraft,   // broken (Gumbel): accepts any draft the target could have produced
};

// The token of the race at `pos` over weights w (any scale; zero weights never win): the
// Gumbel coupling's draw, for the drafter from q and for the target from p.
Token race_sample(std::span<const float> w, int pos, const SamplingParams& sp);

// Sampling probabilities (temperature, top-k, top-p) of one row of logits.
std::vector<float> sampling_probs(std::span<const float> logits, const SamplingParams& sp);

// The drafter's token at `pos` from its probabilities q (by the coupling's draw).
Token draft_sample(std::span<const float> q, int pos, const SamplingParams& sp);

// Whether the targets need the drafter's probability vectors (the residual coupling's accept
// test does; the Gumbel coupling compares tokens only).
inline bool needs_draft_probs(const SamplingParams& sp) {
  return !sp.greedy() && sp.coupling == Coupling::kResidual;
}

// Decides positions first .. seq.size() of a verification of `seq` (its drafts are
// seq[first .. size)). p(pos) gives the target's probabilities at pos, q(pos) the drafter's
// probabilities for the draft seq[pos] (asked only for the residual coupling's accept tests).
// Returns one token per position up to and including the first one that differs from the
// draft; -1 after it.
std::vector<Token> verify_sampled(std::span<const Token> seq, int first,
                                  const std::function<std::span<const float>(int)>& p,
                                  const std::function<std::span<const float>(int)>& q,
                                  BonusRule rule, const SamplingParams& sp,
                                  VerifierVariant variant = VerifierVariant::kCorrect);

}  // namespace dsi
