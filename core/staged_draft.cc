#include "core/staged_draft.h"

#include <algorithm>

namespace dsi {

std::vector<Token> ngram_proposal(std::span<const Token> seq, int max_n, int max_len) {
  const int len = static_cast<int>(seq.size());
  if (max_len < 1) return {};
  for (int n = std::min(max_n, len - 1); n >= 1; --n) {
    const auto tail = seq.subspan(len - n);
    // The latest start s < len - n whose n tokens equal the tail.
    for (int s = len - n - 1; s >= 0; --s) {
      if (std::equal(tail.begin(), tail.end(), seq.begin() + s)) {
        const int from = s + n, to = std::min(len, from + max_len);
        return {seq.begin() + from, seq.begin() + to};
      }
    }
  }
  return {};
}

StagedDrafts staged_draft(Engine& drafter, std::span<const Token> todo,
                          std::span<const Token> proposal, int pos, const SamplingParams& sp,
                          bool want_probs, const CancelFlag& cancel) {
  const int base = drafter.kv_len();
  std::vector<Token> input(todo.begin(), todo.end());
  input.insert(input.end(), proposal.begin(), proposal.end());
  const int m = static_cast<int>(proposal.size()) + 1;
  StagedDrafts out;
  out.forward_tokens = static_cast<int>(input.size());
  std::vector<Token> own;  // the drafter's token at pos + i, from row i
  if (sp.greedy()) {
    own = drafter.forward_argmax(input, m, cancel);
  } else {
    const Logits l = drafter.forward(input, m, cancel);
    for (int i = 0; i < m; ++i) {
      auto q = sampling_probs(l.row(i), sp);
      own.push_back(draft_sample(q, pos + i, sp));
      if (want_probs) out.probs.push_back(std::move(q));
    }
  }
  for (int i = 0; i < m; ++i) {
    out.tokens.push_back(own[i]);
    if (i + 1 == m || own[i] != proposal[i]) break;
  }
  out.probs.resize(std::min(out.probs.size(), out.tokens.size()));
  // The accepted proposal tokens are the drafts but the last, whose KV is not computed yet.
  drafter.truncate(base + static_cast<int>(todo.size() + out.tokens.size()) - 1);
  return out;
}

}  // namespace dsi
