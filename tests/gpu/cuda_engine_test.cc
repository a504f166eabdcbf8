// The CUDA llama engine (engines/llama/cuda_engine.h) against the CPU one on the same models:
// random GGUFs written in place (as `dsi make-model` does; F16, Q8_0, Q4_1 untied), the
// llama.cpp stand-ins of the outside test data when present (skipped without them,
// tests/test_data.h) and an in-memory model with QKV bias, half-split RoPE and an untied head. FP32
// weights must give the CPU's greedy tokens exactly; FP16/BF16 are held to a logit error and a
// greedy agreement that the test prints. Also: rollback, KV export/import (also between CPU and
// GPU), KV handoff through host and device-memory channels, cancellation, input checks, layer skip.
// Every test skips without a CUDA device.
#include <cuda_runtime.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <ostream>
#include <random>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "common/gpu_binding.h"
#include "engines/engine_factory.h"
#include "engines/llama/cuda_engine.h"
#include "engines/llama/llama_engine.h"
#include "engines/llama/llama_loader.h"
#include "kernels/argmax.h"
#include "kernels/cuda_check.h"
#include "model/random_model.h"
#include "transport/data_channel.h"

#include "../llama_test_model.h"
#include "../test_data.h"

namespace dsi {
namespace {

bool have_gpu() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  return n > 0;
}

#define SKIP_WITHOUT_GPU() \
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device (cudaGetDeviceCount): GPU test not run"

double nmse(std::span<const float> gpu, std::span<const float> cpu) {
  EXPECT_EQ(gpu.size(), cpu.size());
  double num = 0, den = 0;
  for (size_t i = 0; i < cpu.size() && i < gpu.size(); ++i) {
    const double d = static_cast<double>(gpu[i]) - cpu[i];
    num += d * d;
    den += static_cast<double>(cpu[i]) * cpu[i];
  }
  return den > 0 ? num / den : num;
}

Token argmax(std::span<const float> row) {
  int32_t t = 0;
  kernels::argmax_cpu(&t, row.data(), 1, static_cast<int>(row.size()));
  return t;
}

// In-memory model exercising what the GGUF test models do not: QKV bias (Qwen2), half-split
// RoPE, an untied head.
std::shared_ptr<LlamaModel> memory_model() {
  auto m = std::make_shared<LlamaModel>();
  LlamaConfig& c = m->config;
  c.n_vocab = 301;
  c.dim = 96;
  c.n_layers = 3;
  c.n_heads = 6;
  c.n_kv_heads = 2;
  c.head_dim = 16;
  c.rope_dim = 16;
  c.ffn_dim = 160;
  c.rope_layout = kernels::RopeLayout::kHalfSplit;
  c.qkv_bias = true;
  c.max_context = 256;
  fill_random_llama(*m, 7);
  return m;
}

// A random GGUF written and loaded back, as `dsi make-model` would write it.
std::shared_ptr<LlamaModel> random_gguf_model() {
  RandomModelSpec spec;
  spec.dim = 128;
  spec.n_layers = 4;
  spec.n_heads = 4;
  spec.n_kv_heads = 2;
  spec.ffn_dim = 320;
  spec.n_vocab = 512;
  spec.context = 256;
  spec.tied_head = false;
  spec.seed = 11;
  const auto path = std::filesystem::temp_directory_path() /
                    ("dsi_cuda_engine_test_" + std::to_string(getpid()) + ".gguf");
  random_model_writer(spec).write(path.string());
  auto m = load_llama_gguf(path.string());
  std::filesystem::remove(path);
  return m;
}

// The stand-ins of the outside test data, made by llama.cpp (tests/test_data.h): a test that
// uses one skips without it.
bool is_reference(const std::string& name) {
  return name == "tiny-llama-spm-f16" || name == "tiny-llama-spm-q8_0" ||
         name == "tiny-bpe-untied-f16-q4emb";
}

#define SKIP_WITHOUT_MODEL(name) \
  if (is_reference(name)) DSI_REQUIRE_TESTDATA(std::string(name) + ".gguf")

// The GGUF file of a written model: "tiny-f16" (tests/test_data.h), "tiny-q8_0" (the same in
// Q8_0, the tied head read from the quantized embedding), "tiny-q4_1-untied" (Q4_1 with a
// separate output matrix).
std::string written_file(const std::string& name) {
  if (name == "tiny-f16") return test::tiny_model();
  RandomModelSpec s = test::tiny_spec(name == "tiny-q8_0" ? GgmlType::Q8_0 : GgmlType::Q4_1);
  s.tied_head = name == "tiny-q8_0";
  return test::written_model(s, name);
}

// Models by name, loaded once per process.
std::shared_ptr<const LlamaModel> model(const std::string& name) {
  static std::map<std::string, std::shared_ptr<const LlamaModel>> cache;
  auto& m = cache[name];
  if (!m) {
    if (name == "memory") {
      m = memory_model();
    } else if (name == "random") {
      m = random_gguf_model();
    } else if (is_reference(name)) {
      m = load_llama_gguf(test::testdata_path(name + ".gguf"));
    } else {
      m = load_llama_gguf(written_file(name));
    }
  }
  return m;
}

const std::vector<std::string> kModels = {"tiny-llama-spm-f16",
                                          "tiny-llama-spm-q8_0",
                                          "tiny-bpe-untied-f16-q4emb",
                                          "tiny-f16",
                                          "tiny-q8_0",
                                          "tiny-q4_1-untied",
                                          "random",
                                          "memory"};

std::vector<Token> prompt_for(const LlamaModel& m, int n) {
  std::vector<Token> p;
  uint32_t s = 12345;
  for (int i = 0; i < n; ++i) {
    s = s * 1664525u + 1013904223u;
    p.push_back(static_cast<Token>(3 + (s >> 8) % (m.config.n_vocab - 3)));
  }
  return p;
}

CudaEngineOptions gpu_opts(CudaDtype dtype, std::vector<int> layers = {}, int max_context = 256) {
  CudaEngineOptions o;
  o.dtype = dtype;
  o.layers = std::move(layers);
  o.max_context = max_context;
  o.device = 0;
  return o;
}

CudaEngineOptions with_model(std::shared_ptr<const LlamaModel> m, CudaEngineOptions o) {
  o.model = std::move(m);
  return o;
}

LlamaEngineOptions cpu_opts(std::vector<int> layers = {}, int max_context = 256) {
  LlamaEngineOptions o;
  o.layers = std::move(layers);
  o.max_context = max_context;
  return o;
}

// Greedy decoding: prefill, then `steps - 1` one-token forwards. tokens[i] is the argmax of
// logits[i].
struct Greedy {
  std::vector<Token> tokens;
  std::vector<std::vector<float>> logits;
};

Greedy greedy(Engine& e, const std::vector<Token>& prompt, int steps) {
  CancelFlag never;
  Greedy g;
  Logits l = e.forward(prompt, 1, never);
  for (int i = 0; i < steps; ++i) {
    g.logits.push_back(l.data);
    g.tokens.push_back(argmax(l.row(0)));
    if (i + 1 < steps) l = e.forward(std::vector<Token>{g.tokens.back()}, 1, never);
  }
  return g;
}

constexpr int kSteps = 33;         // 33 greedy tokens: 32 to verify in one forward
constexpr double kF32Nmse = 1e-7;  // FP32 GPU vs CPU: summation order only

// A gtest name from a model name: letters and digits kept, the rest '_'.
std::string test_name(std::string s) {
  for (char& ch : s) ch = std::isalnum(static_cast<unsigned char>(ch)) ? ch : '_';
  return s;
}

class CudaEngineF32 : public ::testing::TestWithParam<std::string> {};

// (a) FP32 weights: prefill + one-token decode gives the CPU's greedy tokens, and a verify-style
// forward of the whole continuation (in one block, then in blocks of 8 and 4) predicts them
// again at every position.
// cuBLAS is opened on first use, not linked (kernels/cuda_check.h): it needs no device, and
// every function the engine calls resolves. Runs without a GPU.
TEST(CublasApi, OpensOnFirstUseWithEveryFunction) {
  const CublasApi& api = cublas();
  EXPECT_NE(api.create, nullptr);
  EXPECT_NE(api.destroy, nullptr);
  EXPECT_NE(api.set_stream, nullptr);
  EXPECT_NE(api.set_math_mode, nullptr);
  EXPECT_NE(api.gemm_ex, nullptr);
  EXPECT_NE(api.saxpy, nullptr);
  ASSERT_NE(api.status_string, nullptr);
  const std::string ok = api.status_string(CUBLAS_STATUS_SUCCESS);
  const std::string bad = api.status_string(CUBLAS_STATUS_NOT_INITIALIZED);
  EXPECT_FALSE(bad.empty());
  EXPECT_NE(ok, bad);
  EXPECT_EQ(&cublas(), &api);  // opened once
}

// NCCL likewise (the data plane's table): every function resolves, and the library found is of
// the major version of the headers dsi was built with. Runs without a GPU.
TEST(NcclApi, OpensOnFirstUseWithEveryFunction) {
  const NcclApi& api = nccl();
  for (const void* f :
       {(const void*)api.get_unique_id, (const void*)api.comm_init_rank_config,
        (const void*)api.comm_get_async_error, (const void*)api.comm_finalize,
        (const void*)api.comm_destroy, (const void*)api.comm_abort, (const void*)api.group_start,
        (const void*)api.group_end, (const void*)api.send, (const void*)api.recv,
        (const void*)api.get_last_error}) {
    EXPECT_NE(f, nullptr);
  }
  ASSERT_NE(api.get_version, nullptr);
  int version = 0;
  ASSERT_EQ(api.get_version(&version), ncclSuccess);
  EXPECT_EQ(version / 10000, NCCL_MAJOR) << version;
  EXPECT_NE(std::string(api.get_error_string(ncclSuccess)),
            std::string(api.get_error_string(ncclInvalidArgument)));
  EXPECT_EQ(&nccl(), &api);
}

// Lossless by construction on the GPU: a position's logits have the same bits whether it is
// decoded alone, verified in a block of any size, or the last of a prefill (the batch-invariant
// GEMM; kernels/gemm_cuda.h). Every dtype, on a random F16 model and a Q8_0 one.
TEST(CudaEngine, LogitsHaveTheSameBitsDecodedVerifiedOrPrefilled) {
  SKIP_WITHOUT_GPU();
  for (const char* name : {"tiny-f16", "tiny-q8_0"}) {
    const auto m = model(name);
    const auto prompt = prompt_for(*m, 8);
    const int p = static_cast<int>(prompt.size());
    for (CudaDtype dtype : {CudaDtype::kF16, CudaDtype::kBF16, CudaDtype::kF32}) {
      CudaEngine gpu(*m, gpu_opts(dtype));
      const Greedy dec = greedy(gpu, prompt, 17);  // prefill, then 16 one-token decodes
      const std::vector<Token> cont(dec.tokens.begin(), dec.tokens.end() - 1);
      CancelFlag never;
      auto same_bits = [](std::span<const float> a, const std::vector<float>& b) {
        return a.size() == b.size() && std::memcmp(a.data(), b.data(), b.size() * 4) == 0;
      };
      for (int block : {16, 5, 2}) {
        gpu.truncate(p);
        for (int at = 0; at < 16; at += block) {
          const int k = std::min(block, 16 - at);
          const Logits v = gpu.forward(std::span(cont).subspan(at, k), k, never);
          for (int i = 0; i < k; ++i) {
            EXPECT_TRUE(same_bits(v.row(i), dec.logits[at + i + 1]))
                << name << " dtype " << int(dtype) << " block " << block << " row " << at + i;
          }
        }
      }
      // The prompt's last position decoded alone, after a prefill of the rest.
      gpu.truncate(0);
      (void)gpu.forward(std::span(prompt).first(p - 1), 1, never);
      const Logits last = gpu.forward(std::span(prompt).subspan(p - 1), 1, never);
      EXPECT_TRUE(same_bits(last.row(0), dec.logits[0])) << name << " dtype " << int(dtype);
    }
  }
}

// Token trees on the GPU: every node of a tree forward (one forward under a tree attention
// mask) has the bits of its path's chain forward, grown in two calls too, and after keep_path
// (rows moved on the device) the engine decodes as if the path had been decoded.
TEST(CudaEngine, TreeNodesGetTheLogitsOfTheirPaths) {
  SKIP_WITHOUT_GPU();
  for (const char* name : {"tiny-f16", "tiny-q8_0"}) {
    const auto m = model(name);
    const auto prefix = prompt_for(*m, 6);
    const int vocab = m->config.n_vocab;
    TokenTree tree;  // two tops, branching, depths 0..3, nodes not in depth order
    const int a = tree.add(1 % vocab, -1), b = tree.add(2 % vocab, a), g = tree.add(3 % vocab, -1);
    const int c = tree.add(4 % vocab, b), e = tree.add(5 % vocab, a);
    tree.add(6 % vocab, g);
    tree.add(7 % vocab, c);
    const int f = tree.add(8 % vocab, e);
    for (CudaDtype dtype : {CudaDtype::kF16, CudaDtype::kF32}) {
      SCOPED_TRACE(std::string(name) + " dtype " + std::to_string(int(dtype)));
      CudaEngine te(*m, gpu_opts(dtype)), ce(*m, gpu_opts(dtype));
      CancelFlag never;
      auto same_bits = [](std::span<const float> x, std::span<const float> y) {
        return x.size() == y.size() && std::memcmp(x.data(), y.data(), y.size() * 4) == 0;
      };
      (void)te.forward(prefix, 0, never);
      const Logits got = te.forward_tree(tree, 0, never);
      ASSERT_EQ(got.n, tree.size());
      for (int i = 0; i < tree.size(); ++i) {
        ce.truncate(0);
        std::vector<Token> seq = prefix;
        for (Token x : tree.path_tokens(i)) seq.push_back(x);
        EXPECT_TRUE(same_bits(got.row(i), ce.forward(seq, 1, never).row(0))) << "node " << i;
      }
      CudaEngine ge(*m, gpu_opts(dtype));
      (void)ge.forward(prefix, 0, never);
      TokenTree part = tree;
      part.tokens.resize(5);
      part.parents.resize(5);
      const Logits first = ge.forward_tree(part, 0, never);
      const Logits rest = ge.forward_tree(tree, 5, never);
      for (int i = 0; i < tree.size(); ++i) {
        EXPECT_TRUE(same_bits(got.row(i), i < 5 ? first.row(i) : rest.row(i - 5))) << i;
      }
      te.keep_path(tree, std::vector<int>{a, e, f}, never);
      EXPECT_EQ(te.kv_len(), static_cast<int>(prefix.size()) + 3);
      const std::vector<Token> more = {9 % vocab, 10 % vocab};
      const Logits next = te.forward(more, 2, never);
      std::vector<Token> seq = prefix;
      for (Token x : {tree.tokens[a], tree.tokens[e], tree.tokens[f], more[0], more[1]}) {
        seq.push_back(x);
      }
      ce.truncate(0);
      EXPECT_TRUE(same_bits(next.data, ce.forward(seq, 2, never).data));
    }
  }
}

TEST_P(CudaEngineF32, GreedyEqualsCpuEngine) {
  SKIP_WITHOUT_GPU();
  SKIP_WITHOUT_MODEL(GetParam());
  const auto m = model(GetParam());
  const auto prompt = prompt_for(*m, 8);
  LlamaEngine cpu(m, cpu_opts());
  CudaEngine gpu(*m, gpu_opts(CudaDtype::kF32));
  EXPECT_EQ(gpu.kv_bytes_per_token(), cpu.kv_bytes_per_token());
  const Greedy want = greedy(cpu, prompt, kSteps);
  const Greedy got = greedy(gpu, prompt, kSteps);
  ASSERT_EQ(got.tokens, want.tokens);
  double worst = 0;
  for (int i = 0; i < kSteps; ++i) worst = std::max(worst, nmse(got.logits[i], want.logits[i]));
  EXPECT_LE(worst, kF32Nmse);
  std::printf("[ INFO ] %s f32: %d greedy tokens equal, worst logit nmse %.3g\n",
              GetParam().c_str(), kSteps, worst);

  // Verify: feed tokens[0 .. kSteps-2] after the prompt; row i must predict tokens[i + 1].
  CancelFlag never;
  const std::vector<Token> cont(want.tokens.begin(), want.tokens.end() - 1);
  const int p = static_cast<int>(prompt.size());
  for (int block : {kSteps - 1, 8, 4}) {
    gpu.truncate(p);
    for (int at = 0; at < kSteps - 1; at += block) {
      const int k = std::min(block, kSteps - 1 - at);
      Logits v = gpu.forward(std::span(cont).subspan(at, k), k, never);
      for (int i = 0; i < k; ++i) {
        EXPECT_EQ(argmax(v.row(i)), want.tokens[at + i + 1]) << "block " << block << " row " << i;
        EXPECT_LE(nmse(v.row(i), want.logits[at + i + 1]), kF32Nmse);
      }
    }
    EXPECT_EQ(gpu.kv_len(), p + kSteps - 1);
  }
  // The same verify with the tokens chosen on the device (what a greedy worker calls).
  for (int block : {kSteps - 1, 8, 4}) {
    gpu.truncate(p);
    for (int at = 0; at < kSteps - 1; at += block) {
      const int k = std::min(block, kSteps - 1 - at);
      const std::vector<Token> ids = gpu.forward_argmax(std::span(cont).subspan(at, k), k, never);
      ASSERT_EQ(ids.size(), static_cast<size_t>(k));
      for (int i = 0; i < k; ++i) {
        EXPECT_EQ(ids[i], want.tokens[at + i + 1]) << "block " << block << " row " << i;
      }
    }
    EXPECT_EQ(gpu.kv_len(), p + kSteps - 1);
  }
}

INSTANTIATE_TEST_SUITE_P(Models, CudaEngineF32, ::testing::ValuesIn(kModels),
                         [](const auto& i) { return test_name(i.param); });

// (b) Half-precision weights: logit error and teacher-forced greedy agreement with the CPU's
// FP32 greedy continuation over 32 positions (prefill's prediction + a verify of 31 tokens).
struct HalfCase {
  std::string model;
  CudaDtype dtype;
  double max_nmse;
  double min_agree;
};

const char* dtype_suffix(CudaDtype t) {
  return t == CudaDtype::kF16 ? "_f16" : "_bf16";
}

// Names the case in gtest's and ctest's listings instead of dumping its bytes.
void PrintTo(const HalfCase& hc, std::ostream* os) {
  *os << hc.model << dtype_suffix(hc.dtype);
}

class CudaEngineHalf : public ::testing::TestWithParam<HalfCase> {};

TEST_P(CudaEngineHalf, CloseToCpuEngine) {
  SKIP_WITHOUT_GPU();
  const HalfCase& hc = GetParam();
  SKIP_WITHOUT_MODEL(hc.model);
  const auto m = model(hc.model);
  const auto prompt = prompt_for(*m, 8);
  LlamaEngine cpu(m, cpu_opts());
  const Greedy want = greedy(cpu, prompt, 32);
  CudaEngine gpu(*m, gpu_opts(hc.dtype));
  CancelFlag never;
  Logits first = gpu.forward(prompt, 1, never);
  const std::vector<Token> cont(want.tokens.begin(), want.tokens.end() - 1);
  Logits rest = gpu.forward(cont, static_cast<int>(cont.size()), never);
  int agree = argmax(first.row(0)) == want.tokens[0];
  double err = nmse(first.row(0), want.logits[0]);
  for (int i = 0; i < rest.n; ++i) {
    agree += argmax(rest.row(i)) == want.tokens[i + 1];
    err = std::max(err, nmse(rest.row(i), want.logits[i + 1]));
  }
  const double rate = agree / 32.0;
  std::printf("[ INFO ] %s%s: worst logit nmse %.3g, greedy agreement %d/32\n", hc.model.c_str(),
              dtype_suffix(hc.dtype), err, agree);
  RecordProperty("nmse", std::to_string(err));
  RecordProperty("agreement", std::to_string(rate));
  EXPECT_LE(err, hc.max_nmse);
  EXPECT_GE(rate, hc.min_agree);
}

// FP16 rounds weights and GEMM inputs to 11 significant bits (BF16: 8), so logits move by
// ~1e-3 (BF16 ~1e-2) relative; thresholds are an order of magnitude above that, far below what
// a wrong kernel gives (nmse ~1).
INSTANTIATE_TEST_SUITE_P(
    Models, CudaEngineHalf,
    ::testing::Values(HalfCase{"tiny-llama-spm-f16", CudaDtype::kF16, 1e-3, 0.9},
                      HalfCase{"tiny-f16", CudaDtype::kF16, 1e-3, 0.9},
                      HalfCase{"random", CudaDtype::kF16, 1e-3, 0.9},
                      HalfCase{"memory", CudaDtype::kF16, 1e-3, 0.9},
                      HalfCase{"tiny-llama-spm-f16", CudaDtype::kBF16, 1e-2, 0.75},
                      HalfCase{"tiny-f16", CudaDtype::kBF16, 1e-2, 0.75},
                      HalfCase{"random", CudaDtype::kBF16, 1e-2, 0.75}),
    [](const auto& i) { return test_name(i.param.model + dtype_suffix(i.param.dtype)); });

// (c) Rollback: the same forward after a truncate gives bit-identical logits; a partial
// rollback recomputes the same positions up to summation order.
TEST(CudaEngine, TruncateAndReforward) {
  SKIP_WITHOUT_GPU();
  const auto m = model("random");
  const auto seq = prompt_for(*m, 20);
  const std::span<const Token> prompt = std::span(seq).first(12), next = std::span(seq).subspan(12);
  CancelFlag never;
  CudaEngine e(*m, gpu_opts(CudaDtype::kF16));
  e.forward(prompt, 0, never);
  const Logits a = e.forward(next, 8, never);
  e.truncate(12);
  EXPECT_EQ(e.kv_len(), 12);
  const Logits b = e.forward(next, 8, never);
  EXPECT_EQ(b.data, a.data);
  e.truncate(15);
  const Logits c = e.forward(next.subspan(3), 5, never);
  for (int i = 0; i < 5; ++i) EXPECT_LE(nmse(c.row(i), a.row(3 + i)), 1e-9) << i;
  // A wrong draft rolled back leaves no trace.
  e.truncate(12);
  e.forward(std::vector<Token>{5, 6, 7}, 0, never);
  e.truncate(12);
  EXPECT_EQ(e.forward(next, 8, never).data, a.data);
  EXPECT_THROW(e.truncate(21), std::out_of_range);
}

// forward_argmax chooses on the device exactly the tokens the CPU's argmax chooses from
// forward's logits (kernels/argmax_cuda.h: bit-exact, ties to the lowest index), in every
// dtype, and moves the KV cache as forward does; n_logits 0 returns no token.
TEST(CudaEngine, ForwardArgmaxIsArgmaxOfForward) {
  SKIP_WITHOUT_GPU();
  const auto m = model("random");
  const auto seq = prompt_for(*m, 20);
  const std::span<const Token> prompt = std::span(seq).first(12), next = std::span(seq).subspan(12);
  CancelFlag never;
  for (CudaDtype dtype : {CudaDtype::kF32, CudaDtype::kF16, CudaDtype::kBF16}) {
    CudaEngine e(*m, gpu_opts(dtype));
    EXPECT_TRUE(e.forward_argmax(prompt, 0, never).empty());
    EXPECT_EQ(e.kv_len(), 12);
    const Logits l = e.forward(next, 8, never);
    e.truncate(12);
    const std::vector<Token> ids = e.forward_argmax(next, 8, never);
    EXPECT_EQ(e.kv_len(), 20);
    EXPECT_EQ(ids, l.argmax()) << "dtype " << static_cast<int>(dtype);
    // One-token decode, as the drafter calls it.
    const Logits one = e.forward(std::vector<Token>{ids.back()}, 1, never);
    e.truncate(20);
    EXPECT_EQ(e.forward_argmax(std::vector<Token>{ids.back()}, 1, never), one.argmax());
    EXPECT_EQ(e.kv_len(), 21);
  }
}

// (c) export_kv from one engine, import_kv into a fresh one (whole, and in two pieces): the
// next forward gives the original's logits exactly.
TEST(CudaEngine, ExportImportGivesIdenticalLogits) {
  SKIP_WITHOUT_GPU();
  const auto m = model("random");
  const auto seq = prompt_for(*m, 16);
  const auto prompt = std::span(seq).first(12);
  const auto next = std::span(seq).subspan(12);
  CancelFlag never;
  CudaEngine a(*m, gpu_opts(CudaDtype::kF16));
  a.forward(prompt, 0, never);
  const KvBlob whole = a.export_kv(0, 12);
  EXPECT_EQ(whole.bytes.size(), 12 * a.kv_bytes_per_token());
  CudaEngine b(*m, gpu_opts(CudaDtype::kF16));
  b.import_kv(whole);
  EXPECT_EQ(b.kv_len(), 12);
  CudaEngine c(*m, gpu_opts(CudaDtype::kF16));
  c.import_kv(a.export_kv(0, 5));
  c.import_kv(a.export_kv(5, 12));
  EXPECT_EQ(c.export_kv(0, 12).bytes, whole.bytes);
  const Logits la = a.forward(next, 4, never);
  EXPECT_EQ(b.forward(next, 4, never).data, la.data);
  EXPECT_EQ(c.forward(next, 4, never).data, la.data);

  // The checks of LlamaEngine::import_kv / export_kv.
  CudaEngine d(*m, gpu_opts(CudaDtype::kF16));
  EXPECT_THROW(d.import_kv(a.export_kv(2, 5)), std::invalid_argument);  // not at kv_len
  KvBlob bad = a.export_kv(0, 3);
  bad.bytes.pop_back();
  EXPECT_THROW(d.import_kv(bad), std::invalid_argument);
  EXPECT_THROW(a.export_kv(0, 17), std::out_of_range);
  EXPECT_EQ(d.kv_len(), 0);
}

// (c) FP32 blobs have the CPU engine's layout: a prompt's KV moves CPU -> GPU and GPU -> CPU.
TEST(CudaEngine, KvBlobsMoveBetweenCpuAndGpu) {
  SKIP_WITHOUT_GPU();
  const auto m = model("memory");
  const auto seq = prompt_for(*m, 14);
  const auto prompt = std::span(seq).first(10);
  const auto next = std::span(seq).subspan(10);
  CancelFlag never;
  LlamaEngine cpu(m, cpu_opts());
  cpu.forward(prompt, 0, never);
  CudaEngine gpu(*m, gpu_opts(CudaDtype::kF32));
  gpu.import_kv(cpu.export_kv(0, 10));
  LlamaEngine cpu2(m, cpu_opts());
  cpu2.import_kv(gpu.export_kv(0, 10));
  const Logits want = cpu.forward(next, 4, never);
  EXPECT_LE(nmse(gpu.forward(next, 4, never).data, want.data), kF32Nmse);
  EXPECT_LE(nmse(cpu2.forward(next, 4, never).data, want.data), kF32Nmse);
}

// A channel that moves device memory within one process (the NCCL channel's contract, without
// NCCL): send_device copies the bytes into a buffer of its own once the sender's stream has
// run, recv_device copies them out on the receiver's stream.
class DeviceLoopback final : public DataChannel {
 public:
  ~DeviceLoopback() override {
    for (auto& [k, b] : items_) cudaFree(b.p);
  }
  void send(int, const DataKey&, std::vector<uint8_t>) override {
    throw std::logic_error("DeviceLoopback: host send not expected");
  }
  bool recv(const DataKey&, std::vector<uint8_t>&, Clock::time_point, const CancelFlag*) override {
    throw std::logic_error("DeviceLoopback: host recv not expected");
  }
  void discard(const std::function<bool(const DataKey&)>&) override {}
  bool moves_device_memory() const override { return true; }
  void send_device(int, const DataKey& key, const void* src, size_t bytes, void* stream) override {
    CUDA_CHECK(cudaStreamSynchronize(static_cast<cudaStream_t>(stream)));
    Item it{nullptr, bytes};
    CUDA_CHECK(cudaMalloc(&it.p, std::max<size_t>(bytes, 1)));
    CUDA_CHECK(cudaMemcpy(it.p, src, bytes, cudaMemcpyDeviceToDevice));
    items_[key] = it;
  }
  bool recv_device(const DataKey& key, void* dst, size_t bytes, void* stream, Clock::time_point,
                   const CancelFlag*) override {
    auto it = items_.find(key);
    if (it == items_.end()) return false;
    EXPECT_EQ(bytes, it->second.bytes);
    CUDA_CHECK(cudaMemcpyAsync(dst, it->second.p, bytes, cudaMemcpyDeviceToDevice,
                               static_cast<cudaStream_t>(stream)));
    return true;
  }
  std::vector<uint8_t> host_bytes(const DataKey& key) const {
    const Item& it = items_.at(key);
    std::vector<uint8_t> h(it.bytes);
    CUDA_CHECK(cudaMemcpy(h.data(), it.p, it.bytes, cudaMemcpyDeviceToHost));
    return h;
  }

 private:
  struct Item {
    void* p;
    size_t bytes;
  };
  std::map<DataKey, Item> items_;
};

// send_kv / recv_kv: through host memory on a host channel, device to device on a device one;
// the device payload is the export_kv blob byte for byte, and the receiver continues exactly
// as the sender.
TEST(CudaEngine, KvHandoffOverHostAndDeviceChannels) {
  SKIP_WITHOUT_GPU();
  const auto m = model("random");
  const auto seq = prompt_for(*m, 16);
  const auto prompt = std::span(seq).first(12);
  const auto next = std::span(seq).subspan(12);
  CancelFlag never;
  CudaEngine a(*m, gpu_opts(CudaDtype::kF16));
  a.forward(prompt, 0, never);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);

  LoopbackDataHub hub(2);
  auto ch0 = hub.channel(0), ch1 = hub.channel(1);
  const DataKey key{1, DataKind::kKvCache, 0, 0};
  a.send_kv(*ch0, 1, key, 0, 12);
  CudaEngine b(*m, gpu_opts(CudaDtype::kF16));
  ASSERT_TRUE(b.recv_kv(*ch1, key, 0, 12, deadline, nullptr));
  EXPECT_EQ(b.kv_len(), 12);

  DeviceLoopback dev;
  a.send_kv(dev, 1, key, 0, 7);
  a.send_kv(dev, 1, DataKey{1, DataKind::kKvCache, 0, 7}, 7, 12);
  EXPECT_EQ(dev.host_bytes(key), a.export_kv(0, 7).bytes);
  CudaEngine c(*m, gpu_opts(CudaDtype::kF16));
  const DataKey missing{1, DataKind::kKvCache, 9, 0};
  EXPECT_FALSE(c.recv_kv(dev, missing, 0, 12, deadline, nullptr));
  EXPECT_EQ(c.kv_len(), 0);
  EXPECT_THROW(c.recv_kv(dev, key, 3, 7, deadline, nullptr), std::invalid_argument);
  ASSERT_TRUE(c.recv_kv(dev, key, 0, 7, deadline, nullptr));
  ASSERT_TRUE(c.recv_kv(dev, DataKey{1, DataKind::kKvCache, 0, 7}, 7, 12, deadline, nullptr));
  EXPECT_EQ(c.kv_len(), 12);

  const Logits la = a.forward(next, 4, never);
  EXPECT_EQ(b.forward(next, 4, never).data, la.data);
  EXPECT_EQ(c.forward(next, 4, never).data, la.data);
}

// (d) A flag raised before the forward: Cancelled, kv_len unchanged, and the engine goes on
// as if the cancelled forward never happened.
TEST(CudaEngine, CancelLeavesCacheAtOldLength) {
  SKIP_WITHOUT_GPU();
  const auto m = model("random");
  const auto seq = prompt_for(*m, 7);
  CancelFlag never, raised;
  raised.cancel();
  CudaEngine e(*m, gpu_opts(CudaDtype::kF32));
  e.forward(std::span(seq).first(4), 0, never);
  EXPECT_THROW(e.forward(std::span(seq).subspan(4), 3, raised), Cancelled);
  EXPECT_EQ(e.kv_len(), 4);
  const Logits after = e.forward(std::span(seq).subspan(4), 3, never);
  EXPECT_EQ(e.kv_len(), 7);
  LlamaEngine ref(m, cpu_opts());
  const Logits straight = ref.forward(seq, 3, never);
  EXPECT_LE(nmse(after.data, straight.data), kF32Nmse);
}

// A cancel raised by another thread between two layers (after layer `at`, held there by
// CancelBetweenLayers so that no timing decides): the host enqueues no further layer, so
// exactly at + 1 of the 4 layers were enqueued, the forward throws Cancelled, kv_len stays
// where it was, and the engine goes on as if that forward never happened. Raised after the
// last layer, the forward has not returned yet: Cancelled too.
TEST(CudaEngine, CancelFromAnotherThreadDuringForward) {
  SKIP_WITHOUT_GPU();
  const auto m = model("tiny-f16");
  const int n_layers = m->config.n_layers;
  ASSERT_EQ(n_layers, 4);
  const auto seq = prompt_for(*m, 300);
  CancelFlag never;
  LlamaEngine ref(m, cpu_opts({}, 512));
  const Logits straight = ref.forward(std::span(seq).first(15), 1, never);
  for (int at = 0; at < n_layers; ++at) {
    CancelFlag flag;
    CancelBetweenLayers cancel(flag, at);
    CudaEngineOptions o = gpu_opts(CudaDtype::kF32, {}, 512);
    o.after_layer = [&](int slot) { cancel.layer_done(slot); };
    CudaEngine e(*m, o);
    e.forward(std::span(seq).first(10), 0, never);
    EXPECT_EQ(cancel.done.size(), static_cast<size_t>(n_layers));
    cancel.done.clear();
    cancel.armed = true;
    EXPECT_THROW(e.forward(std::span(seq).subspan(10), 1, flag), Cancelled) << "at " << at;
    std::vector<int> enqueued(at + 1);
    for (int i = 0; i <= at; ++i) enqueued[i] = i;
    EXPECT_EQ(cancel.done, enqueued) << "the flag went up after layer " << at;
    EXPECT_EQ(e.kv_len(), 10);
    cancel.armed = false;
    const Logits l = e.forward(std::span(seq).subspan(10, 5), 1, never);
    EXPECT_EQ(e.kv_len(), 15);
    EXPECT_LE(nmse(l.data, straight.data), kF32Nmse);
  }
}

// The input checks of LlamaEngine::forward, with the cache untouched.
TEST(CudaEngine, RejectsBadInput) {
  SKIP_WITHOUT_GPU();
  const auto m = model("memory");
  CancelFlag never;
  CudaEngine e(*m, gpu_opts(CudaDtype::kF16, {}, 16));
  e.forward(std::vector<Token>{1, 2, 3}, 0, never);
  EXPECT_THROW(e.forward(std::vector<Token>{1, 2}, 3, never), std::invalid_argument);
  EXPECT_THROW(e.forward(std::vector<Token>{1, 2}, -1, never), std::invalid_argument);
  EXPECT_THROW(e.forward(std::vector<Token>(14, 1), 1, never), std::length_error);
  EXPECT_THROW(e.forward(std::vector<Token>{1, 301}, 1, never), std::out_of_range);
  EXPECT_THROW(e.forward(std::vector<Token>{-1}, 1, never), std::out_of_range);
  EXPECT_EQ(e.kv_len(), 3);
  EXPECT_EQ(e.forward(std::vector<Token>{}, 0, never).n, 0);
  EXPECT_THROW(make_cuda_engine(with_model(m, gpu_opts(CudaDtype::kF16, {0, 5}))),
               std::invalid_argument);
  EXPECT_THROW(make_cuda_engine(with_model(m, gpu_opts(CudaDtype::kF16, {2, 1}))),
               std::invalid_argument);
}

// (e) The layer-skip drafter: the kept layers on the GPU give the CPU drafter's greedy tokens.
TEST(CudaEngine, LayerSkipDrafterEqualsCpuDrafter) {
  SKIP_WITHOUT_GPU();
  for (const auto& [name, layers] : std::vector<std::pair<std::string, std::vector<int>>>{
           {"random", {0, 2, 3}}, {"tiny-f16", {0, 3}}, {"memory", {1}}}) {
    const auto m = model(name);
    const auto prompt = prompt_for(*m, 8);
    LlamaEngine cpu(m, cpu_opts(layers));
    CudaEngine gpu(*m, gpu_opts(CudaDtype::kF32, layers));
    EXPECT_EQ(gpu.kv_bytes_per_token(), cpu.kv_bytes_per_token());
    const Greedy want = greedy(cpu, prompt, kSteps);
    const Greedy got = greedy(gpu, prompt, kSteps);
    EXPECT_EQ(got.tokens, want.tokens) << name;
    for (int i = 0; i < kSteps; ++i) EXPECT_LE(nmse(got.logits[i], want.logits[i]), kF32Nmse);
  }
}

// The factory builds the CUDA engine from a worker spec (loading only the kept layers) and it
// names its device.
TEST(CudaEngine, FactoryBuildsItFromTheSpec) {
  SKIP_WITHOUT_GPU();
  const std::string path = written_file("tiny-f16");
  const LlamaSpec spec{.model = path,
                       .device = LlamaDevice::kCuda,
                       .dtype = CudaDtype::kF32,
                       .gpu = 0,
                       .layers = {0, 2},
                       .max_context = 64};
  auto gpu = make_engine(spec);
  const std::string name = gpu->device_name();
  EXPECT_EQ(name.rfind("cuda:", 0), 0u) << name;
  EXPECT_NE(name.find('@'), std::string::npos) << name;
  LlamaEngine cpu(model("tiny-f16"), cpu_opts({0, 2}, 64));
  const auto prompt = prompt_for(*model("tiny-f16"), 6);
  EXPECT_EQ(greedy(*gpu, prompt, 16).tokens, greedy(cpu, prompt, 16).tokens);
  LlamaSpec bad = spec;
  bad.gpu = 1000;
  EXPECT_THROW(make_engine(bad), GpuBindingError);
}

}  // namespace
}  // namespace dsi
