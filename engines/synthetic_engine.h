// A deterministic stand-in model for orchestration tests and latency experiments. The
// target's next token is a hash of the seed and the whole context; the drafter proposes that
// same token with probability `acceptance` (a deterministic draw from the same context hash)
// and another token otherwise. Forward latency is spent sleeping in short slices that honour
// cancellation. It is not a language model and computes no real logits.
#pragma once

#include <cstdint>
#include <vector>

#include "engines/engine.h"

namespace dsi {

struct SyntheticParams {
  uint64_t seed = 1;
  int vocab = 64;
  double acceptance = 0.9;  // a: drafter only
  double ttft_ms = 20;      // first forward of a sequence (prefill)
  double forward_ms = 20;   // every later forward
  double per_token_ms = 0;  // plus this for each token in the forward
  bool drafter = false;
  double overlap = 0.5;  // drafter only: how much of the target's logit noise it shares
  // Drafter only, a drifting acceptance: phases[i] replaces `acceptance` for the positions
  // [phase_start + i * phase_len, phase_start + (i + 1) * phase_len), the last to the end.
  std::vector<double> phases;
  int phase_start = 0;
  int phase_len = 1;
  // Drafter only: when its best token is not the target's, the probability that the target's
  // is its second best (what a token tree's siblings can catch; 0: only by chance).
  double second = 0;
  // Drafter only: which of several drafters (merged drafters, roles.drafters > 1) this is.
  // Each stream draws its own errors at the same acceptance; stream 0 is the lead drafter.
  uint32_t stream = 0;
  bool operator==(const SyntheticParams&) const = default;
};

// The synthetic model as pure functions of the context hash, so the coordinator and tests
// can recompute what any rank would produce without running it.
namespace synthetic {
uint64_t start_hash(uint64_t seed);
uint64_t extend_hash(uint64_t h, Token t);
Token target_next(uint64_t seed, uint64_t h, int vocab);
Token drafter_next(uint64_t seed, uint64_t h, int vocab, double acceptance, uint32_t stream = 0);
// The drafter's acceptance rate for the token at position pos (the context's length).
double acceptance_at(const SyntheticParams& p, size_t pos);
// Logits after the context with hash h and length pos: noise in [0, kSpread) per token plus kPeak
// on the model's greedy token (target_next / drafter_next), so argmax is exactly the greedy token
// while sampling sees a full distribution. The drafter's noise is `overlap` times the
// target's plus (1 - overlap) times its own; with probability `second` (a keyed draw) a wrong
// drafter ranks the target's token second, just below its peak.
inline constexpr float kSpread = 3.0f;
inline constexpr float kPeak = 3.5f;
void logits(const SyntheticParams& p, uint64_t h, size_t pos, float* out);
}  // namespace synthetic

class SyntheticEngine final : public Engine {
 public:
  explicit SyntheticEngine(SyntheticParams p);

  Logits forward(std::span<const Token> tokens, int n_logits, const CancelFlag& cancel) override;
  // One forward's latency for the whole tree (as a GPU's tree attention would take).
  Logits forward_tree(const TokenTree& tree, int from, const CancelFlag& cancel) override;
  void keep_path(const TokenTree& tree, std::span<const int> path,
                 const CancelFlag& cancel) override;
  void truncate(int n) override;
  int kv_len() const override { return static_cast<int>(hashes_.size()); }
  int vocab_size() const override { return p_.vocab; }
  KvBlob export_kv(int begin, int end) const override;
  void import_kv(const KvBlob& kv) override;

  // Latency the next forward of n tokens would take, in milliseconds.
  double forward_cost_ms(int n_tokens) const;

 private:
  SyntheticParams p_;
  std::vector<uint64_t> hashes_;       // hashes_[i]: hash of the context through position i
  TokenTree tree_;                     // the nodes forward_tree ran, until another call
  std::vector<uint64_t> tree_hashes_;  // context hash through each of them
};

// Sleeps `ms` milliseconds, or until the flag is raised (it wakes the sleeper at once).
// Returns false if cancelled.
bool cancellable_sleep_ms(double ms, const CancelFlag& cancel);

// Deterministic synthetic prompt of n tokens for a seed.
std::vector<Token> synthetic_prompt(uint64_t seed, int n, int vocab);

}  // namespace dsi
