// Token trees: the tree type, tree forwards on the synthetic engine and the Engine default
// (each node's logits are its path's), and tree verification: exact match (greedy, Gumbel)
// gives the target's own text, and multi-step speculative sampling (residual coupling) draws
// every token from the target's distribution (chi-square), while a sampler that does not
// carry the residual from sibling to sibling fails the same test.
#include <gtest/gtest.h>

#include <cstring>
#include <map>
#include <random>

#include "common/token_tree.h"
#include "core/verify.h"
#include "engines/synthetic_engine.h"
#include "sim/simulator.h"
#include "tests/stats.h"

namespace dsi {
namespace {

// depth:  0   1   2   3
//         a - b - c - d
//           \ e - f
//         g - h
//           \ i
TokenTree sample_tree() {
  TokenTree t;
  const int a = t.add(5, -1);
  const int b = t.add(9, a);
  const int g = t.add(7, -1);
  const int c = t.add(2, b);
  const int e = t.add(3, a);
  const int h = t.add(1, g);
  const int d = t.add(4, c);
  t.add(6, e);  // f
  t.add(8, g);  // i
  (void)h;
  (void)d;
  return t;
}

TEST(TokenTree, PathsDepthsAndChildren) {
  const TokenTree t = sample_tree();
  EXPECT_EQ(t.invalid(), "");
  EXPECT_EQ(t.height(), 4);
  EXPECT_EQ(t.depth(6), 3);
  EXPECT_EQ(t.path_to(6), (std::vector<int>{0, 1, 3, 6}));
  EXPECT_EQ(t.path_tokens(7), (std::vector<Token>{5, 3, 6}));
  EXPECT_EQ(t.children(-1), (std::vector<int>{0, 2}));
  EXPECT_EQ(t.children(0), (std::vector<int>{1, 4}));
  EXPECT_TRUE(t.is_path(std::vector<int>{2, 8}));
  EXPECT_TRUE(t.is_path(std::vector<int>{}));
  EXPECT_FALSE(t.is_path(std::vector<int>{1, 3}));      // does not start at depth 0
  EXPECT_FALSE(t.is_path(std::vector<int>{0, 3}));      // 3 is not a child of 0
  EXPECT_EQ(t.follow(std::vector<Token>{5, 3, 6}), 7);  // a e f
  EXPECT_EQ(t.follow(std::vector<Token>{7}), 2);
  EXPECT_EQ(t.follow(std::vector<Token>{}), -1);
  EXPECT_EQ(t.follow(std::vector<Token>{7, 9}), -2);          // g has no child 9
  EXPECT_EQ(t.follow(std::vector<Token>{5, 3, 6, 1}), -2);    // f is a leaf
  EXPECT_EQ(t.first_path(), (std::vector<int>{0, 1, 3, 6}));  // a b c d
  const TokenTree below_a = t.below(0);                       // b c d and e f
  EXPECT_EQ(below_a.tokens, (std::vector<Token>{9, 2, 3, 4, 6}));
  EXPECT_EQ(below_a.parents, (std::vector<int>{-1, 0, -1, 1, 2}));
  EXPECT_EQ(t.below(-1).tokens, t.tokens);
  EXPECT_EQ(t.below(-1).parents, t.parents);
  EXPECT_EQ(t.below(6).size(), 0);

  const TokenTree c = TokenTree::chain(std::vector<Token>{4, 4, 1});
  EXPECT_EQ(c.parents, (std::vector<int>{-1, 0, 1}));
  EXPECT_EQ(c.height(), 3);

  TokenTree bad = t;
  bad.parents[2] = 5;
  EXPECT_NE(bad.invalid().find("node 2 has parent 5"), std::string::npos) << bad.invalid();
  bad = t;
  bad.parents.pop_back();
  EXPECT_NE(bad.invalid(), "");
}

SyntheticParams fast_target() {
  return {.seed = 3, .vocab = 16, .ttft_ms = 0, .forward_ms = 0};
}

// Every node's logits equal those of a chain forward of the prefix and its path, and after
// keep_path the engine continues as if the path had been decoded.
void expect_tree_matches_chains(Engine& tree_engine, Engine& chain_engine) {
  CancelFlag never;
  const std::vector<Token> prefix = {1, 2, 3, 4};
  const TokenTree t = sample_tree();
  (void)tree_engine.forward(prefix, 0, never);
  const Logits got = tree_engine.forward_tree(t, 0, never);
  ASSERT_EQ(got.n, t.size());
  EXPECT_EQ(tree_engine.kv_len(), 4);
  for (int i = 0; i < t.size(); ++i) {
    chain_engine.truncate(0);
    std::vector<Token> seq = prefix;
    for (Token x : t.path_tokens(i)) seq.push_back(x);
    const Logits want = chain_engine.forward(seq, 1, never);
    EXPECT_EQ(std::memcmp(got.row(i).data(), want.row(0).data(), want.vocab * sizeof(float)), 0)
        << "node " << i;
  }
  const std::vector<int> path = {0, 4, 7};  // a e f
  tree_engine.keep_path(t, path, never);
  EXPECT_EQ(tree_engine.kv_len(), 7);
  const Logits next = tree_engine.forward(std::vector<Token>{11}, 1, never);
  chain_engine.truncate(0);
  const Logits want = chain_engine.forward(std::vector<Token>{1, 2, 3, 4, 5, 3, 6, 11}, 1, never);
  EXPECT_EQ(std::memcmp(next.data.data(), want.data.data(), want.vocab * sizeof(float)), 0);
}

TEST(TokenTree, SyntheticTreeForwardGivesEachNodeItsPathsLogits) {
  SyntheticEngine a(fast_target()), b(fast_target());
  expect_tree_matches_chains(a, b);
}

// An engine with only the chain forward: the Engine defaults run trees.
class ChainOnly final : public Engine {
 public:
  ChainOnly() : e_(fast_target()) {}
  Logits forward(std::span<const Token> t, int n, const CancelFlag& c) override {
    return e_.forward(t, n, c);
  }
  void truncate(int n) override { e_.truncate(n); }
  int kv_len() const override { return e_.kv_len(); }
  int vocab_size() const override { return e_.vocab_size(); }

 private:
  SyntheticEngine e_;
};

TEST(TokenTree, TheEngineDefaultRunsTreesAsChains) {
  ChainOnly a;
  SyntheticEngine b(fast_target());
  expect_tree_matches_chains(a, b);
}

TEST(TokenTree, KeepPathNeedsTheTreesForwardAndAPath) {
  SyntheticEngine e(fast_target());
  CancelFlag never;
  const TokenTree t = sample_tree();
  EXPECT_THROW(e.keep_path(t, std::vector<int>{0}, never), std::logic_error);
  (void)e.forward_tree(t, 0, never);
  EXPECT_THROW(e.keep_path(t, std::vector<int>{0, 3}, never), std::invalid_argument);
  (void)e.forward(std::vector<Token>{1}, 0, never);  // drops the tree's KV
  EXPECT_THROW(e.keep_path(t, std::vector<int>{0}, never), std::logic_error);
  TokenTree bad = t;
  bad.parents[0] = 0;
  EXPECT_THROW(e.forward_tree(bad, 0, never), std::invalid_argument);
}

// --- verification -----------------------------------------------------------------------

// The target of these tests: a function of the context (the synthetic model's greedy token).
Token greedy_after(const std::vector<Token>& ctx) {
  uint64_t h = synthetic::start_hash(7);
  for (Token t : ctx) h = synthetic::extend_hash(h, t);
  return synthetic::target_next(7, h, 4);
}

TEST(TreeVerify, ExactMatchAcceptsTheLongestPathOfTheTargetsText) {
  std::mt19937 rng(1);
  for (int trial = 0; trial < 2000; ++trial) {
    // A random tree over a vocabulary of 4, so that paths often match.
    TokenTree t;
    const int n = 1 + static_cast<int>(rng() % 12);
    for (int i = 0; i < n; ++i)
      t.add(static_cast<Token>(rng() % 4), static_cast<int>(rng() % (i + 1)) - 1);
    const std::vector<Token> prompt = {static_cast<Token>(trial % 4)};
    auto ctx_of = [&](int node) {
      std::vector<Token> c = prompt;
      if (node >= 0) {
        for (Token x : t.path_tokens(node)) c.push_back(x);
      }
      return c;
    };
    const TreeVerdict v =
        verify_tree_exact(t, [&](int node) { return greedy_after(ctx_of(node)); });
    ASSERT_TRUE(t.is_path(v.path));
    // The path is the target's own text, and the target's next token has no node below it.
    std::vector<Token> text = prompt;
    for (int node : v.path) {
      ASSERT_EQ(t.tokens[node], greedy_after(text));
      text.push_back(t.tokens[node]);
    }
    ASSERT_EQ(v.next, greedy_after(text));
    for (int c : t.children(v.path.empty() ? -1 : v.path.back())) ASSERT_NE(t.tokens[c], v.next);
  }
}

SyntheticParams target_model() {
  return {.seed = 42, .vocab = 6, .forward_ms = 10};
}
SyntheticParams drafter_model() {
  return {
      .seed = 42, .vocab = 6, .acceptance = 0.3, .forward_ms = 1, .drafter = true, .overlap = 0.1};
}

// One verification of a tree drafted from q after `ctx`: a branching factor per depth, each
// node's children drawn i.i.d. from the drafter's q (as multi-step sampling requires).
struct Drafted {
  TokenTree tree;
  std::vector<std::vector<float>> p, q;  // after each node; index 0 = after ctx
};

Drafted draft_tree(const std::vector<Token>& ctx, const std::vector<int>& shape,
                   const SamplingParams& sp, std::mt19937_64& rng) {
  Drafted d;
  auto grow = [&](auto& self, int node, const std::vector<Token>& c, size_t depth) -> void {
    d.p[node + 1] = synthetic_probs(target_model(), c, sp);
    d.q[node + 1] = synthetic_probs(drafter_model(), c, sp);
    if (depth >= shape.size()) return;
    const auto q = d.q[node + 1];
    for (int j = 0; j < shape[depth]; ++j) {
      std::discrete_distribution<int> pick(q.begin(), q.end());
      const int child = d.tree.add(pick(rng), node);
      d.p.emplace_back();
      d.q.emplace_back();
      std::vector<Token> cc = c;
      cc.push_back(d.tree.tokens[child]);
      self(self, child, cc, depth + 1);
    }
  };
  d.p.emplace_back();
  d.q.emplace_back();
  grow(grow, -1, ctx, 0);
  return d;
}

// p-value of the joint distribution of the first two generated tokens when each verification
// checks a tree of `shape` (a second verification runs when the first commits one token).
double tree_tokens_p_value(const std::vector<int>& shape, Coupling coupling, TreeVariant variant,
                           int runs) {
  const std::vector<Token> prompt = {1, 2, 3};
  SamplingParams sp{.temperature = 1, .coupling = coupling};
  std::map<std::pair<int, int>, int> counts;
  std::mt19937_64 rng(99);
  for (int run = 0; run < runs; ++run) {
    sp.seed = 1000 + run;
    std::vector<Token> text = prompt;
    while (text.size() < prompt.size() + 2) {
      const Drafted d = draft_tree(text, shape, sp, rng);
      const TreeVerdict v = verify_tree_sampled(
          d.tree, static_cast<int>(text.size()),
          [&](int n) { return std::span<const float>(d.p[n + 1]); },
          [&](int n) { return std::span<const float>(d.q[n + 1]); }, sp, variant);
      for (int node : v.path) text.push_back(d.tree.tokens[node]);
      text.push_back(v.next);
    }
    ++counts[{text[3], text[4]}];
  }
  double chi2 = 0;
  int cells = 0;
  const auto p1 = synthetic_probs(target_model(), prompt, sp);
  for (int a = 0; a < 6; ++a) {
    std::vector<Token> ctx = prompt;
    ctx.push_back(a);
    const auto p2 = synthetic_probs(target_model(), ctx, sp);
    for (int b = 0; b < 6; ++b) {
      const double e = runs * static_cast<double>(p1[a]) * p2[b];
      const double diff = counts[{a, b}] - e;
      chi2 += diff * diff / e;
      ++cells;
    }
  }
  return gamma_q((cells - 1) / 2.0, chi2 / 2);
}

constexpr double kAlpha = 1e-4;  // a false failure per case; broken samplers fall far below

TEST(TreeVerify, MultiStepSamplingDrawsEveryTokenFromTheTarget) {
  for (const auto& shape :
       {std::vector<int>{3}, std::vector<int>{3, 2}, std::vector<int>{2, 2, 1}}) {
    EXPECT_GT(tree_tokens_p_value(shape, Coupling::kResidual, TreeVariant::kCorrect, 6000), kAlpha)
        << "shape of " << shape.size() << " levels, " << shape[0] << " at the top";
  }
}

TEST(TreeVerify, ASamplerThatDoesNotCarryTheResidualFailsTheDistributionTest) {
  EXPECT_LT(tree_tokens_p_value({3, 2}, Coupling::kResidual, TreeVariant::kNoResidualUpdate, 6000),
            kAlpha);
}

TEST(TreeVerify, GumbelTreesGiveTheTargetsTextOfTheSeed) {
  // Exact match on the target's race: the text is non-SI sampling's for the seed, whatever
  // the tree's shape or draws.
  const std::vector<Token> prompt = {1, 2, 3};
  std::mt19937_64 rng(5);
  for (uint64_t seed = 1; seed <= 20; ++seed) {
    SamplingParams sp{.temperature = 0.8f, .seed = seed, .coupling = Coupling::kGumbel};
    const auto want = synthetic_sampled_reference(target_model(), prompt, 12, sp);
    std::vector<Token> text = prompt;
    while (text.size() < prompt.size() + 12) {
      const Drafted d = draft_tree(text, {3, 2, 2}, sp, rng);
      const TreeVerdict v = verify_tree_sampled(
          d.tree, static_cast<int>(text.size()),
          [&](int n) { return std::span<const float>(d.p[n + 1]); },
          [&](int n) { return std::span<const float>(d.q[n + 1]); }, sp);
      for (int node : v.path) text.push_back(d.tree.tokens[node]);
      text.push_back(v.next);
    }
    text.resize(prompt.size() + 12);
    EXPECT_EQ(std::vector<Token>(text.begin() + 3, text.end()), want) << "seed " << seed;
  }
}

TEST(TreeVerify, AChainVerifiesAsVerifySampledDoes) {
  // Residual coupling: a chain tree makes verify_sampled's draws, so chains behave as before.
  std::mt19937_64 rng(11);
  const std::vector<Token> prompt = {1, 2, 3};
  for (uint64_t seed = 1; seed <= 300; ++seed) {
    SamplingParams sp{.temperature = 1, .seed = seed, .coupling = Coupling::kResidual};
    const Drafted d = draft_tree(prompt, {1, 1, 1, 1}, sp, rng);
    const int first = static_cast<int>(prompt.size());
    auto p = [&](int n) { return std::span<const float>(d.p[n + 1]); };
    auto q = [&](int n) { return std::span<const float>(d.q[n + 1]); };
    const TreeVerdict v = verify_tree_sampled(d.tree, first, p, q, sp);
    std::vector<Token> seq = prompt;
    for (Token x : d.tree.tokens) seq.push_back(x);
    // verify_sampled indexes by position: p(pos) decides position pos (node pos - first - 1).
    const auto out = verify_sampled(
        seq, first, [&](int pos) { return p(pos - first - 1); },
        [&](int pos) { return q(pos - first - 1); }, BonusRule{}, sp);
    size_t acc = 0;
    while (acc < d.tree.tokens.size() && out[acc] == d.tree.tokens[acc]) ++acc;
    ASSERT_EQ(v.path.size(), acc) << "seed " << seed;
    ASSERT_EQ(v.next, out[acc]) << "seed " << seed;
  }
}

}  // namespace
}  // namespace dsi
