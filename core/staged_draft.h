// Staged drafting (staged speculative decoding, arXiv 2308.04623): the drafter rank speculates
// for itself with a stage that costs nothing, prompt lookup (the tokens that followed the
// latest earlier occurrence of the text's last n-gram), and checks the stage's tokens with one
// forward of its own model. Its drafts are its own tokens at each position, which a batch-
// invariant engine computes bit for bit as in single-token decoding, so the drafts are the
// same drafts as without the stage, only sooner when the text repeats itself.
#pragma once

#include <span>
#include <vector>

#include "common/cancel.h"
#include "core/verify.h"
#include "engines/engine.h"

namespace dsi {

// Prompt lookup: the tokens that followed the latest earlier occurrence of seq's last n tokens,
// for the longest n in [1, max_n] that occurs, at most max_len of them; empty when none does.
std::vector<Token> ngram_proposal(std::span<const Token> seq, int max_n, int max_len);

struct StagedDrafts {
  std::vector<Token> tokens;              // the drafter's tokens at pos, pos + 1, ...
  std::vector<std::vector<float>> probs;  // with sampling, q at each (when asked for)
  int forward_tokens = 0;                 // the forward's length
};

// One drafter forward of `todo` (what its cache lacks of the text, at least its last token)
// and `proposal` after it, the text ending at position pos: the drafter's token at pos, then
// at each next position while the proposal's token before it was the drafter's own. The
// engine keeps the KV of todo and the accepted proposal tokens (all but the last draft).
StagedDrafts staged_draft(Engine& drafter, std::span<const Token> todo,
                          std::span<const Token> proposal, int pos, const SamplingParams& sp,
                          bool want_probs, const CancelFlag& cancel);

}  // namespace dsi
