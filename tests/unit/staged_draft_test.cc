// Staged drafting: prompt lookup proposes, one drafter forward checks, and the drafts are
// exactly the drafter's own single-step drafts (bit-identical logits in a batch-invariant
// engine), greedy and sampled, whatever the proposal; the engine keeps the accepted tokens' KV.
#include <gtest/gtest.h>

#include <random>

#include "../llama_test_model.h"
#include "core/staged_draft.h"
#include "engines/llama/llama_engine.h"
#include "engines/synthetic_engine.h"

namespace dsi {
namespace {

TEST(StagedDraft, PromptLookupTakesWhatFollowedTheLatestLongestMatch) {
  const std::vector<Token> seq = {1, 2, 3, 4, 9, 2, 3, 5, 7, 1, 2, 3};
  // "1 2 3" occurs at 0 (followed by 4 9 ...); "2 3" later at 5 (followed by 5), but the
  // longest n-gram wins.
  EXPECT_EQ(ngram_proposal(seq, 3, 4), (std::vector<Token>{4, 9, 2, 3}));
  EXPECT_EQ(ngram_proposal(seq, 2, 4), (std::vector<Token>{5, 7, 1, 2}));  // latest "2 3"
  EXPECT_EQ(ngram_proposal(seq, 3, 2), (std::vector<Token>{4, 9}));
  EXPECT_EQ(ngram_proposal(seq, 3, 0), (std::vector<Token>{}));
  EXPECT_EQ(ngram_proposal(std::vector<Token>{1, 2, 3}, 3, 4), (std::vector<Token>{}));
  EXPECT_EQ(ngram_proposal(std::vector<Token>{}, 3, 4), (std::vector<Token>{}));
  // The match may run up to the text's end: "5 5" after "5" at the end.
  EXPECT_EQ(ngram_proposal(std::vector<Token>{5, 5, 5}, 1, 4), (std::vector<Token>{5}));
}

std::shared_ptr<LlamaModel> small_model() {
  auto m = std::make_shared<LlamaModel>();
  LlamaConfig& c = m->config;
  c.n_vocab = 31;
  c.dim = 32;
  c.n_layers = 2;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.head_dim = 8;
  c.rope_dim = 8;
  c.ffn_dim = 48;
  c.rope_base = 10000.0f;
  c.max_context = 128;
  fill_random_llama(*m, 7);
  return m;
}

// The drafter's chain from `prompt` one forward per draft: the reference.
std::vector<Token> single_steps(Engine& e, const std::vector<Token>& prompt, int n,
                                const SamplingParams& sp) {
  CancelFlag never;
  e.truncate(0);
  std::vector<Token> seq = prompt, out;
  std::span<const Token> todo(seq);
  for (int i = 0; i < n; ++i) {
    const Logits l = e.forward(todo, 1, never);
    const auto q = sampling_probs(l.row(0), sp);
    const Token t = sp.greedy() ? l.argmax()[0] : draft_sample(q, static_cast<int>(seq.size()), sp);
    out.push_back(t);
    seq.push_back(t);
    todo = std::span(seq).last(1);
  }
  return out;
}

TEST(StagedDraft, DraftsAreTheDraftersOwnWhateverTheProposal) {
  for (const SamplingParams& sp :
       {SamplingParams{}, SamplingParams{.temperature = 0.9f, .seed = 3}}) {
    auto model = small_model();
    LlamaEngineOptions o;
    LlamaEngine e(model, o);
    const std::vector<Token> prompt = {3, 1, 4, 1, 5, 9, 2, 6};
    const int n = 40;
    const std::vector<Token> want = single_steps(e, prompt, n, sp);
    std::mt19937 rng(5);
    for (int trial = 0; trial < 3; ++trial) {
      // Proposals: the right continuation, random tokens, or right then wrong.
      CancelFlag never;
      e.truncate(0);
      std::vector<Token> seq = prompt, got;
      size_t cached = 0;
      int forwards = 0;
      while (static_cast<int>(got.size()) < n) {
        const int at = static_cast<int>(got.size());
        std::vector<Token> proposal;
        const int len = std::min<int>(1 + rng() % 5, n - at - 1);
        for (int i = 0; i < len; ++i) {
          const bool right = trial == 0 || (trial == 2 && i < len / 2);
          proposal.push_back(right ? want[at + i] : static_cast<Token>(rng() % 31));
        }
        const StagedDrafts d = staged_draft(e, std::span(seq).subspan(cached), proposal,
                                            static_cast<int>(seq.size()), sp, !sp.greedy(), never);
        ++forwards;
        ASSERT_FALSE(d.tokens.empty());
        ASSERT_LE(d.tokens.size(), proposal.size() + 1);
        if (!sp.greedy()) ASSERT_EQ(d.probs.size(), d.tokens.size());
        for (Token t : d.tokens) {
          got.push_back(t);
          seq.push_back(t);
        }
        // The cache holds the text but the last draft.
        cached = seq.size() - 1;
        ASSERT_EQ(e.kv_len(), static_cast<int>(cached));
      }
      got.resize(n);
      EXPECT_EQ(got, want) << "trial " << trial << (sp.greedy() ? " greedy" : " sampled");
      if (trial == 0) EXPECT_LT(forwards, n / 2) << "right proposals: several drafts a forward";
    }
  }
}

}  // namespace
}  // namespace dsi
