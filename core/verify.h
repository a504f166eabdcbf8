// Verification of a draft sequence by the target: greedy (the target's argmax at every
// position) and speculative sampling (Leviathan et al.; Chen et al.), with every random draw
// keyed by position (common/rng.h) so that the decision at a position is a pure function of
// its context, whichever task or rank makes it. docs/sampling.md gives the argument.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "common/token_tree.h"
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

// Token trees (SpecInfer, arXiv 2305.09781). A tree of drafts grows from a sequence of
// length `first`: its depth-0 nodes are candidates for position `first`, the children of a node
// at depth d for position first + d + 1. A verdict is the accepted path and the target's token
// after it.
struct TreeVerdict {
  std::vector<int> path;  // accepted nodes, top-down (empty: no draft accepted)
  Token next = -1;        // the target's token after the path (a correction or the bonus)
};

// Exact-match verification, for greedy decoding and the Gumbel coupling: target(node) is the
// target's token after node (-1: after the sequence). From the top, the first child (in index
// order) whose token equals the target's is accepted, until none does. The text is the
// target's own whatever the tree: each token is a function of its prefix.
TreeVerdict verify_tree_exact(const TokenTree& tree, const std::function<Token(int)>& target);

// Deliberately wrong tree verifiers, for the test that shows the distribution test can fail.
enum class TreeVariant {
  kCorrect,
  kNoResidualUpdate,  // broken: tests every sibling against p, not the residual left by the
                      // siblings rejected before it
};

// Sampled verification of a tree. kGumbel: verify_tree_exact on the target's race at each
// position. kResidual: multi-step speculative sampling: the children of a node, drawn i.i.d.
// from the drafter's q(node), are tested in index order, each accepted with min(1, r(x)/q(x))
// where r starts as p(node) and becomes norm(max(0, r - q(node))) after each rejection; when
// every child is rejected the token is drawn from r, and after a leaf from p(leaf). Each token
// is then distributed as p. p(node), q(node): the target's and the drafter's probabilities
// after node (-1: at position first); q is asked only for nodes with children. A chain gives
// verify_sampled's tokens with BonusRule{} (the same draws).
TreeVerdict verify_tree_sampled(const TokenTree& tree, int first,
                                const std::function<std::span<const float>(int)>& p,
                                const std::function<std::span<const float>(int)>& q,
                                const SamplingParams& sp,
                                TreeVariant variant = TreeVariant::kCorrect);

}  // namespace dsi
