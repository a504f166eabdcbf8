// Lossless means bit-identical: a position's logits are the same bits whether it is prefilled
// with the whole prompt, decoded alone, or verified in a block of any length at any offset, for
// every weight type, float32 and 8-bit activations, and every thread count from 1 to 4
// (kernels/qmatmul.h fixes the arithmetic;
// attention, norms and RoPE work per position). Compared with memcmp, no tolerance.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "engines/llama/llama_engine.h"
#include "tests/llama_test_model.h"

namespace dsi {
namespace {

const GgmlType kTypes[] = {GgmlType::F32,  GgmlType::F16,  GgmlType::BF16, GgmlType::Q8_0,
                           GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1,
                           GgmlType::Q2_K, GgmlType::Q3_K, GgmlType::Q4_K, GgmlType::Q5_K,
                           GgmlType::Q6_K};

// A 2-layer qwen2-like model (QKV biases, untied head) whose every matrix is of type t; widths
// are multiples of 256, the K-quants' block.
std::shared_ptr<LlamaModel> typed_model(GgmlType t) {
  auto m = std::make_shared<LlamaModel>();
  LlamaConfig& c = m->config;
  c.n_vocab = 61;
  c.dim = 256;
  c.n_layers = 2;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.head_dim = 64;
  c.rope_dim = 64;
  c.ffn_dim = 256;
  c.rope_base = 10000.0f;
  c.rope_layout = kernels::RopeLayout::kHalfSplit;
  c.tied_head = false;
  c.qkv_bias = true;
  c.max_context = 32;
  fill_typed_llama(*m, t);
  return m;
}

bool same_bits(std::span<const float> a, std::span<const float> b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

const std::vector<Token> kSeq = {3, 14, 15, 9, 26, 53, 58, 9, 7, 32, 38, 46};

class BatchInvariance : public ::testing::TestWithParam<GgmlType> {};

TEST_P(BatchInvariance, LogitsAreTheSameBitsHoweverPositionsAreBatched) {
  const GgmlType t = GetParam();
  auto model = typed_model(t);
  CancelFlag never;
  const int n = static_cast<int>(kSeq.size());
  for (kernels::Activations act : {kernels::Activations::kF32, kernels::Activations::kQ8}) {
    LlamaEngineOptions o;
    o.threads = 1;
    o.activations = act;
    Logits ref = LlamaEngine(model, o).forward(kSeq, n, never);
    for (float v : ref.data) ASSERT_TRUE(std::isfinite(v)) << ggml_type_name(t);

    for (int threads = 1; threads <= 4; ++threads) {
      SCOPED_TRACE(std::string(ggml_type_name(t)) + ", " + kernels::activations_name(act) + ", " +
                   std::to_string(threads) + " threads");
      o.threads = threads;
      LlamaEngine e(model, o);
      // Prefill of the whole sequence.
      EXPECT_TRUE(same_bits(e.forward(kSeq, n, never).data, ref.data));
      // Decode, one position at a time.
      e.truncate(0);
      for (int i = 0; i < n; ++i) {
        Logits one = e.forward(std::span(kSeq).subspan(i, 1), 1, never);
        EXPECT_TRUE(same_bits(one.row(0), ref.row(i))) << "decoded position " << i;
      }
      // Verify blocks of 1..5 positions at every offset after a rollback.
      for (int at = 1; at < n; ++at) {
        for (int len = 1; len <= 5 && at + len <= n; ++len) {
          e.truncate(at);
          Logits block = e.forward(std::span(kSeq).subspan(at, len), len, never);
          for (int i = 0; i < len; ++i) {
            EXPECT_TRUE(same_bits(block.row(i), ref.row(at + i)))
                << "position " << at + i << " in a block of " << len << " at " << at;
          }
        }
      }
    }
  }
}

// Token trees: every node of a tree forward (one forward under a tree attention mask) gets the
// bits its path gets in a chain forward, and after keep_path (rows moved, not recomputed) the
// engine decodes as if the path had been decoded.
TEST_P(BatchInvariance, TreeNodesGetTheLogitsOfTheirPaths) {
  const GgmlType t = GetParam();
  auto model = typed_model(t);
  CancelFlag never;
  const std::vector<Token> prefix(kSeq.begin(), kSeq.begin() + 4);
  TokenTree tree;  // two tops, branching, depths 0..3, nodes not in depth order
  const int a = tree.add(15, -1), b = tree.add(9, a), g = tree.add(7, -1);
  const int c = tree.add(26, b), e = tree.add(32, a);
  tree.add(38, g);
  const int d = tree.add(53, c);
  const int f = tree.add(46, e);
  (void)d;
  for (int threads = 1; threads <= 3; ++threads) {
    SCOPED_TRACE(std::string(ggml_type_name(t)) + ", " + std::to_string(threads) + " threads");
    LlamaEngineOptions o;
    o.threads = threads;
    LlamaEngine te(model, o), ce(model, o);
    (void)te.forward(prefix, 0, never);
    const Logits got = te.forward_tree(tree, 0, never);
    ASSERT_EQ(got.n, tree.size());
    EXPECT_EQ(te.kv_len(), 4);
    for (int i = 0; i < tree.size(); ++i) {
      ce.truncate(0);
      std::vector<Token> seq = prefix;
      for (Token x : tree.path_tokens(i)) seq.push_back(x);
      EXPECT_TRUE(same_bits(got.row(i), ce.forward(seq, 1, never).row(0))) << "node " << i;
    }
    // Grown in two calls (a drafter expanding its tree), the nodes get the same bits.
    LlamaEngine ge(model, o);
    (void)ge.forward(prefix, 0, never);
    TokenTree part = tree;
    part.tokens.resize(5);
    part.parents.resize(5);
    const Logits first = ge.forward_tree(part, 0, never);
    const Logits rest = ge.forward_tree(tree, 5, never);
    ASSERT_EQ(rest.n, tree.size() - 5);
    for (int i = 0; i < tree.size(); ++i) {
      EXPECT_TRUE(same_bits(got.row(i), i < 5 ? first.row(i) : rest.row(i - 5))) << "grown " << i;
    }
    EXPECT_THROW(ge.forward_tree(tree, 4, never), std::logic_error);  // not the last tree
    te.keep_path(tree, std::vector<int>{a, e, f}, never);
    EXPECT_EQ(te.kv_len(), 7);
    const std::vector<Token> more = {58, 9};
    const Logits next = te.forward(more, 2, never);
    ce.truncate(0);
    const Logits want = ce.forward(std::vector<Token>{3, 14, 15, 9, 15, 32, 46, 58, 9}, 2, never);
    EXPECT_TRUE(same_bits(next.data, want.data));
    // keep_path needs the tree's forward; a forward in between drops it.
    (void)te.forward_tree(tree, 0, never);
    (void)te.forward(more, 0, never);
    EXPECT_THROW(te.keep_path(tree, std::vector<int>{a}, never), std::logic_error);
  }
}

INSTANTIATE_TEST_SUITE_P(EveryType, BatchInvariance, ::testing::ValuesIn(kTypes),
                         [](const auto& info) { return std::string(ggml_type_name(info.param)); });

}  // namespace
}  // namespace dsi
