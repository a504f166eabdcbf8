// The GGUF writer and the random-model builder: metadata and tensors round-trip through
// GgufFile, quantized tensors come back within the quantizer's bound, and a random model of
// a small shape loads through the normal loader and tokenizer and runs a forward.
#include "model/gguf_writer.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "engines/llama/llama_engine.h"
#include "engines/llama/llama_loader.h"
#include "kernels/dequant.h"
#include "model/gguf.h"
#include "model/random_model.h"
#include "model/tokenizer/tokenizer.h"

namespace dsi {
namespace {

TEST(GgufWriter, MetadataRoundTrip) {
  GgufWriter w(64);
  w.set_u32("a.u32", 7);
  w.set_i32("a.i32", -3);
  w.set_u64("a.u64", 1ull << 40);
  w.set_f32("a.f32", 0.25f);
  w.set_bool("a.bool", true);
  w.set_string("a.str", "h\xc3\xa9llo");
  w.set_strings("a.strs", {"x", "", "yz"});
  w.set_f32s("a.f32s", {1.5f, -2.0f});
  w.set_i32s("a.i32s", {4, -5, 6});
  w.add_tensor_bytes("t.bytes", GgmlType::F32, {3}, std::vector<uint8_t>(12, 0));
  EXPECT_THROW(w.add_tensor_bytes("bad", GgmlType::F32, {3}, std::vector<uint8_t>(11)),
               std::invalid_argument);
  const auto bytes = w.to_bytes();
  const auto f = GgufFile::parse(bytes.data(), bytes.size(), "mem");
  EXPECT_EQ(f->version(), 3u);
  EXPECT_EQ(f->alignment(), 64u);
  EXPECT_EQ(f->data_offset() % 64, 0u);
  EXPECT_EQ(f->get_int("a.u32"), 7);
  EXPECT_EQ(f->get_int("a.i32"), -3);
  EXPECT_EQ(f->get_int("a.u64"), int64_t{1} << 40);
  EXPECT_EQ(f->get_float("a.f32"), 0.25);
  EXPECT_TRUE(f->get_bool("a.bool", false));
  EXPECT_EQ(f->get_string("a.str"), "h\xc3\xa9llo");
  EXPECT_EQ(f->get_strings("a.strs"), (std::vector<std::string>{"x", "", "yz"}));
  EXPECT_EQ(f->get_floats("a.f32s"), (std::vector<float>{1.5f, -2.0f}));
  EXPECT_EQ(f->get_ints("a.i32s"), (std::vector<int32_t>{4, -5, 6}));
  ASSERT_EQ(f->tensors().size(), 1u);
}

// Max |error| allowed per block by each quantizer (see quantize_row), from the block's values.
double bound(GgmlType t, const float* x) {
  float lo = x[0], hi = x[0], amax = 0;
  for (int i = 0; i < 32; ++i) {
    lo = std::min(lo, x[i]);
    hi = std::max(hi, x[i]);
    amax = std::max(amax, std::abs(x[i]));
  }
  const double half_rel = 1.0 / 1024;  // the scale is stored as half
  switch (t) {
    case GgmlType::Q8_0:
      return amax / 254.0 * (1 + 2 * half_rel) + amax * half_rel;
    case GgmlType::Q4_0:
      return amax / 8.0 * (1 + 2 * half_rel) + amax * 2 * half_rel;  // far side: a step
    case GgmlType::Q4_1:
      return (hi - lo) / 30.0 * (1 + 2 * half_rel) + (std::abs(lo) + (hi - lo)) * half_rel;
    case GgmlType::F16:
      return amax / 2048.0 + 1e-7;
    case GgmlType::BF16:
      return amax / 256.0;
    default:
      return 0;
  }
}

TEST(GgufWriter, QuantizedTensorsWithinBound) {
  const int64_t cols = 96, rows = 5;
  std::mt19937 rng(5);
  std::normal_distribution<float> nd(0.3f, 1.0f);
  std::vector<float> x(cols * rows);
  for (auto& v : x) v = nd(rng);
  x[7] = 0;  // a block with an exact zero and one of constant values below
  for (int i = 32; i < 64; ++i) x[i] = 2.5f;
  GgufWriter w;
  const GgmlType types[] = {GgmlType::F32,  GgmlType::F16,  GgmlType::BF16,
                            GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_1};
  for (GgmlType t : types) {
    w.add_tensor(std::string("w.") + ggml_type_name(t), t, {cols, rows},
                 [&x](float* out, int64_t first, int64_t n) {
                   std::copy(x.begin() + first, x.begin() + first + n, out);
                 });
  }
  const auto bytes = w.to_bytes();
  const auto f = GgufFile::parse(bytes.data(), bytes.size(), "mem");
  for (GgmlType t : types) {
    SCOPED_TRACE(ggml_type_name(t));
    const GgufTensor& g = f->tensor(std::string("w.") + ggml_type_name(t));
    EXPECT_EQ(g.type, t);
    EXPECT_EQ(g.ne, (std::vector<int64_t>{cols, rows}));
    EXPECT_EQ(static_cast<size_t>(g.data - bytes.data()) % 32, 0u);
    const auto y = f->dequantize(g);
    ASSERT_EQ(y.size(), x.size());
    for (size_t b = 0; b < x.size() / 32; ++b) {
      const double lim = bound(t, &x[32 * b]);
      for (size_t i = 32 * b; i < 32 * (b + 1); ++i) {
        ASSERT_LE(std::abs(y[i] - x[i]), lim) << "element " << i;
      }
    }
  }
}

RandomModelSpec small_spec(GgmlType type) {
  RandomModelSpec s;
  s.dim = 64;
  s.n_layers = 2;
  s.n_heads = 4;
  s.n_kv_heads = 2;
  s.ffn_dim = 96;
  s.n_vocab = 300;
  s.context = 64;
  s.type = type;
  s.seed = 3;
  return s;
}

TEST(RandomModel, LoadsTokenizesAndRunsAForward) {
  for (GgmlType type : {GgmlType::F16, GgmlType::Q8_0, GgmlType::Q4_1}) {
    SCOPED_TRACE(ggml_type_name(type));
    const RandomModelSpec s = small_spec(type);
    const std::string path = ::testing::TempDir() + "dsi_random_" + ggml_type_name(type) + ".gguf";
    random_model_writer(s).write(path);

    const auto file = GgufFile::open(path);
    const LlamaConfig c = llama_config_from_gguf(*file);
    EXPECT_EQ(c.dim, 64);
    EXPECT_EQ(c.n_layers, 2);
    EXPECT_EQ(c.n_heads, 4);
    EXPECT_EQ(c.n_kv_heads, 2);
    EXPECT_EQ(c.ffn_dim, 96);
    EXPECT_EQ(c.n_vocab, 300);
    EXPECT_TRUE(c.tied_head);
    EXPECT_EQ(file->tensor("blk.1.ffn_down.weight").type, type);
    EXPECT_EQ(file->tensor("blk.1.ffn_norm.weight").type, GgmlType::F32);

    const auto tok = Tokenizer::from_gguf(*file);
    EXPECT_EQ(tok->vocab_size(), 300);
    const std::string text = "the cat, 42 \xc3\xa9t\xc3\xa9";
    const auto ids = tok->encode(text, true);
    ASSERT_GE(ids.size(), 2u);
    EXPECT_EQ(ids[0], tok->bos());
    EXPECT_EQ(tok->decode(ids), text);

    LlamaEngineOptions opts;
    opts.model_path = path;
    auto engine = make_llama_engine(opts);
    EXPECT_EQ(engine->vocab_size(), 300);
    CancelFlag never;
    const Logits l = engine->forward(ids, static_cast<int>(ids.size()), never);
    EXPECT_EQ(l.n, static_cast<int>(ids.size()));
    EXPECT_EQ(l.vocab, 300);
    ASSERT_EQ(l.data.size(), ids.size() * 300);
    for (float v : l.data) ASSERT_TRUE(std::isfinite(v));
    // Greedy decoding must not collapse onto one token at once (the weight scales' purpose).
    std::vector<Token> seq = {ids.back()};
    std::set<Token> seen;
    for (int i = 0; i < 12; ++i) {
      const Logits n = engine->forward(seq, 1, never);
      const auto row = n.row(0);
      seq[0] = static_cast<Token>(std::max_element(row.begin(), row.end()) - row.begin());
      seen.insert(seq[0]);
    }
    EXPECT_GE(seen.size(), 3u);
    std::remove(path.c_str());
  }
}

TEST(RandomModel, SameSeedSameWeightsAcrossTypes) {
  const auto a = random_model_writer(small_spec(GgmlType::F32)).to_bytes();
  const auto b = random_model_writer(small_spec(GgmlType::Q8_0)).to_bytes();
  const auto fa = GgufFile::parse(a.data(), a.size(), "a");
  const auto fb = GgufFile::parse(b.data(), b.size(), "b");
  const auto wa = fa->dequantize(fa->tensor("blk.0.attn_q.weight"));
  const auto wb = fb->dequantize(fb->tensor("blk.0.attn_q.weight"));
  double num = 0, den = 0, mean2 = 0;
  for (size_t i = 0; i < wa.size(); ++i) {
    num += (wa[i] - wb[i]) * (wa[i] - wb[i]);
    den += wa[i] * wa[i];
  }
  EXPECT_LT(num / den, 1e-3);
  // The scale of the recipe: attn_q ~ N(0, 1/dim).
  for (float v : wa) mean2 += v * v;
  EXPECT_NEAR(mean2 / wa.size(), 1.0 / 64, 0.2 / 64);
}

TEST(RandomModel, WritingTwiceGivesTheSameFile) {
  const GgufWriter w = random_model_writer(small_spec(GgmlType::Q4_1));
  EXPECT_EQ(w.to_bytes(), w.to_bytes());
  RandomModelSpec other = small_spec(GgmlType::Q4_1);
  other.seed = 4;
  EXPECT_NE(w.to_bytes(), random_model_writer(other).to_bytes());
}

TEST(RandomModel, ShapesAndChecks) {
  const RandomModelSpec s = random_model_shape("llama-1b");
  EXPECT_EQ(s.dim, 2048);
  EXPECT_EQ(s.n_layers, 22);
  EXPECT_EQ(s.n_kv_heads, 4);
  EXPECT_NEAR(random_model_params(s) / 1e9, 1.1, 0.05);
  EXPECT_NEAR(random_model_params(random_model_shape("llama-7b")) / 1e9, 6.74, 0.05);
  EXPECT_THROW(random_model_shape("gpt-5"), std::invalid_argument);
  RandomModelSpec bad = small_spec(GgmlType::Q8_0);
  bad.ffn_dim = 100;  // not a multiple of 32
  EXPECT_THROW(random_model_writer(bad), std::invalid_argument);
  bad = small_spec(GgmlType::F16);
  bad.n_kv_heads = 3;
  EXPECT_THROW(random_model_writer(bad), std::invalid_argument);
  bad = small_spec(GgmlType::F16);
  bad.n_vocab = 100;
  EXPECT_THROW(random_model_writer(bad), std::invalid_argument);
}

}  // namespace
}  // namespace dsi
