// The llama engine's own contract on a small random in-memory model: prefill equals
// token-by-token decoding, rollback and re-verification, cancellation, KV export/import,
// threads and layer skipping. Agreement with the numpy reference on GGUF files is in
// llama_reference_test.cc.
#include "engines/llama/llama_engine.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <random>
#include <thread>

#include "../llama_test_model.h"

namespace dsi {
namespace {

std::shared_ptr<LlamaModel> random_model(bool qkv_bias, kernels::RopeLayout layout, bool tied) {
  auto m = std::make_shared<LlamaModel>();
  LlamaConfig& c = m->config;
  c.n_vocab = 97;
  c.dim = 48;
  c.n_layers = 3;
  c.n_heads = 6;
  c.n_kv_heads = 2;
  c.head_dim = 8;
  c.rope_dim = 8;
  c.ffn_dim = 64;
  c.rope_base = 10000.0f;
  c.rope_layout = layout;
  c.tied_head = tied;
  c.qkv_bias = qkv_bias;
  c.max_context = 64;
  fill_random_llama(*m, 42);
  return m;
}

float max_diff(std::span<const float> a, std::span<const float> b) {
  EXPECT_EQ(a.size(), b.size());
  float m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::abs(a[i] - b[i]));
  return m;
}

// Bit equality: the engine computes a position's logits with the same arithmetic however it
// is batched (kernels/qmatmul.h), so there is no tolerance.
bool same_bits(std::span<const float> a, std::span<const float> b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

LlamaEngineOptions opts(std::vector<int> layers, int threads = 1, int max_context = 0) {
  LlamaEngineOptions o;
  o.layers = std::move(layers);
  o.threads = threads;
  o.max_context = max_context;
  return o;
}

const std::vector<Token> kSeq = {3, 14, 15, 92, 65, 35, 89, 79, 32, 38};

class LlamaEngineTest : public ::testing::TestWithParam<int> {};

TEST_P(LlamaEngineTest, PrefillEqualsDecodeAndRollbackReverify) {
  const int variant = GetParam();
  auto model = random_model(
      variant & 1,
      (variant & 2) ? kernels::RopeLayout::kHalfSplit : kernels::RopeLayout::kAdjacentPairs,
      variant & 4);
  CancelFlag never;
  LlamaEngine full(model, {});
  Logits all = full.forward(kSeq, static_cast<int>(kSeq.size()), never);
  ASSERT_EQ(all.n, static_cast<int>(kSeq.size()));
  ASSERT_EQ(full.kv_len(), static_cast<int>(kSeq.size()));

  LlamaEngine step(model, {});
  for (size_t i = 0; i < kSeq.size(); ++i) {
    Logits one = step.forward(std::span(kSeq).subspan(i, 1), 1, never);
    EXPECT_TRUE(same_bits(one.row(0), all.row(static_cast<int>(i)))) << "position " << i;
  }
  // Roll back to 4 and verify the remaining 6 tokens in one forward.
  step.truncate(4);
  Logits verify = step.forward(std::span(kSeq).subspan(4), 6, never);
  for (int i = 0; i < 6; ++i) EXPECT_TRUE(same_bits(verify.row(i), all.row(4 + i)));
  // A wrong draft then a rollback leaves no trace.
  step.truncate(5);
  step.forward(std::vector<Token>{1, 2, 3}, 0, never);
  step.truncate(5);
  Logits again = step.forward(std::span(kSeq).subspan(5, 2), 2, never);
  EXPECT_TRUE(same_bits(again.row(1), all.row(6)));
}

INSTANTIATE_TEST_SUITE_P(BiasRopeTied, LlamaEngineTest, ::testing::Range(0, 8));

TEST(LlamaEngine, CancelLeavesCacheAtOldLength) {
  auto model = random_model(false, kernels::RopeLayout::kAdjacentPairs, true);
  LlamaEngine e(model, {});
  CancelFlag never, raised;
  raised.cancel();
  e.forward(std::span(kSeq).first(4), 0, never);
  EXPECT_THROW(e.forward(std::span(kSeq).subspan(4, 3), 3, raised), Cancelled);
  EXPECT_EQ(e.kv_len(), 4);
  Logits after = e.forward(std::span(kSeq).subspan(4, 3), 3, never);
  LlamaEngine ref(model, {});
  Logits straight = ref.forward(std::span(kSeq).first(7), 3, never);
  EXPECT_TRUE(same_bits(after.data, straight.data));
}

// A cancel raised by another thread between two layers (after layer `at`, held there by
// CancelBetweenLayers so that no timing decides): the forward stops before the next layer, so
// exactly at + 1 of the 3 layers ran, throws Cancelled, leaves kv_len where it was, and the
// engine then goes on as if that forward never happened. Raised after the last layer, the
// forward has not returned yet: Cancelled too.
TEST(LlamaEngine, CancelFromAnotherThreadDuringForward) {
  auto model = random_model(false, kernels::RopeLayout::kAdjacentPairs, true);
  ASSERT_EQ(model->config.n_layers, 3);
  std::vector<Token> seq;
  for (int i = 0; i < 60; ++i) seq.push_back((i * 31 + 5) % 97);
  CancelFlag never;
  LlamaEngine ref(model, {});
  Logits straight = ref.forward(seq, 1, never);
  for (int at = 0; at < 3; ++at) {
    CancelFlag flag;
    CancelBetweenLayers cancel(flag, at);
    LlamaEngineOptions o = opts({}, 2);
    o.after_layer = [&](int slot) { cancel.layer_done(slot); };
    LlamaEngine e(model, o);
    e.forward(std::span(seq).first(10), 0, never);
    EXPECT_EQ(cancel.done, (std::vector<int>{0, 1, 2}));
    cancel.done.clear();
    cancel.armed = true;
    EXPECT_THROW(e.forward(std::span(seq).subspan(10), 1, flag), Cancelled) << "at " << at;
    std::vector<int> ran(at + 1);
    for (int i = 0; i <= at; ++i) ran[i] = i;
    EXPECT_EQ(cancel.done, ran) << "the flag went up after layer " << at;
    EXPECT_EQ(e.kv_len(), 10);
    cancel.armed = false;
    Logits l = e.forward(std::span(seq).subspan(10), 1, never);
    EXPECT_EQ(e.kv_len(), 60);
    EXPECT_TRUE(same_bits(l.data, straight.data));
  }
}

TEST(LlamaEngine, ExportImportKvContinuesTheSequence) {
  auto model = random_model(true, kernels::RopeLayout::kAdjacentPairs, false);
  CancelFlag never;
  LlamaEngine a(model, {}), b(model, {});
  a.forward(std::span(kSeq).first(6), 0, never);
  KvBlob head = a.export_kv(0, 4), tail = a.export_kv(4, 6);
  EXPECT_EQ(head.bytes.size(), 4 * a.kv_bytes_per_token());
  EXPECT_THROW(b.import_kv(tail), std::invalid_argument);  // must start at kv_len()
  b.import_kv(head);
  b.import_kv(tail);
  EXPECT_EQ(b.kv_len(), 6);
  Logits la = a.forward(std::span(kSeq).subspan(6, 2), 2, never);
  Logits lb = b.forward(std::span(kSeq).subspan(6, 2), 2, never);
  EXPECT_EQ(la.data, lb.data);
  // The imported rows are what the next forward attends to: other bytes, other logits.
  LlamaEngine c(model, {});
  c.import_kv(head);
  for (size_t i = 0; i < tail.bytes.size(); i += 4) tail.bytes[i + 3] ^= 0x80;
  c.import_kv(tail);
  Logits lc = c.forward(std::span(kSeq).subspan(6, 2), 2, never);
  EXPECT_GT(max_diff(la.data, lc.data), 1e-3);
  LlamaEngine skip(model, opts({0, 2}));
  EXPECT_THROW(skip.import_kv(head), std::invalid_argument);  // other layer set: other size
}

TEST(LlamaEngine, ThreadsGiveTheSameLogits) {
  auto model = random_model(false, kernels::RopeLayout::kAdjacentPairs, true);
  CancelFlag never;
  LlamaEngine one(model, opts({}, 1)), two(model, opts({}, 2));
  // 60 tokens: enough attention work for the engine to use its thread pool.
  std::vector<Token> seq;
  for (int i = 0; i < 60; ++i) seq.push_back((i * 37 + 11) % 97);
  Logits a = one.forward(seq, 3, never), b = two.forward(seq, 3, never);
  EXPECT_TRUE(same_bits(a.data, b.data));
  a = one.forward(std::vector<Token>{7}, 1, never);
  b = two.forward(std::vector<Token>{7}, 1, never);
  EXPECT_TRUE(same_bits(a.data, b.data));
}

TEST(ThreadPool, RunsEveryIndexOnceJobAfterJob) {
  for (int threads : {1, 2, 4}) {
    ThreadPool pool(threads);
    EXPECT_EQ(pool.size(), threads);
    for (int job = 0; job < 300; ++job) {
      const int n = job % 13;
      std::vector<std::atomic<int>> hits(n);
      pool.parallel_for(n, [&](int i) { hits[i].fetch_add(1); });
      for (int i = 0; i < n; ++i) ASSERT_EQ(hits[i].load(), 1) << threads << " " << job;
    }
  }
}

TEST(LlamaEngine, LayerSkipDrafter) {
  auto model = random_model(false, kernels::RopeLayout::kAdjacentPairs, true);
  CancelFlag never;
  LlamaEngine def(model, {}), all(model, opts({0, 1, 2})), skip(model, opts({0, 2}));
  Logits a = def.forward(kSeq, 2, never), b = all.forward(kSeq, 2, never);
  EXPECT_EQ(a.data, b.data);
  Logits s = skip.forward(kSeq, 2, never);
  EXPECT_GT(max_diff(a.data, s.data), 1e-2f);
  EXPECT_EQ(skip.kv_bytes_per_token() * 3, def.kv_bytes_per_token() * 2);
  EXPECT_THROW(LlamaEngine(model, opts({2, 1})), std::invalid_argument);
  EXPECT_THROW(LlamaEngine(model, opts({3})), std::invalid_argument);
}

TEST(LlamaEngine, ContextAndArgumentChecks) {
  auto model = random_model(false, kernels::RopeLayout::kAdjacentPairs, true);
  CancelFlag never;
  LlamaEngine e(model, opts({}, 1, 8));
  EXPECT_THROW(e.forward(kSeq, 1, never), std::length_error);
  EXPECT_EQ(e.kv_len(), 0);
  EXPECT_THROW(e.forward(std::vector<Token>{97}, 1, never), std::out_of_range);
  EXPECT_THROW(e.forward(std::vector<Token>{1}, 2, never), std::invalid_argument);
  EXPECT_THROW(e.truncate(1), std::out_of_range);
  Logits none = e.forward(std::span(kSeq).first(8), 0, never);
  EXPECT_EQ(none.n, 0);
  EXPECT_TRUE(none.data.empty());
  EXPECT_EQ(e.kv_len(), 8);
}

}  // namespace
}  // namespace dsi
