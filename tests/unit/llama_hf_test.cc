// Hugging Face folders (config.json + safetensors, half-split RoPE) against the GGUF files they
// would be converted to: the test writes an HF folder from a random GGUF model written here
// (tied and untied head), undoing the q/k row permutation of llama.cpp's converter, and expects
// the same logits from both engines.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "../test_data.h"
#include "common/error.h"
#include "engines/llama/llama_engine.h"
#include "engines/llama/llama_hf_loader.h"
#include "engines/llama/llama_loader.h"
#include "kernels/half.h"

namespace dsi {
namespace {

namespace fs = std::filesystem;

// "tiny-f16": the tiny random model (tests/test_data.h); "tiny-f16-untied": a separate output
// matrix, 3 layers of width 192 with 6/2 heads, and RoPE base 100000 (so that rope_theta has to
// be read).
std::string gguf_model(const std::string& name) {
  RandomModelSpec s = test::tiny_spec();
  if (name == "tiny-f16-untied") {
    s.tied_head = false;
    s.dim = 192, s.n_layers = 3, s.n_heads = 6, s.n_kv_heads = 2, s.ffn_dim = 512;
    s.rope_base = 100000.0f;
  }
  return test::written_model(s, name);
}

// GGUF (llama arch) stores q/k rows of each head as adjacent RoPE pairs: row 2j+s holds HF row
// s*half + j. This maps them back to HF's half-split order.
std::vector<float> unpermute_rows(const std::vector<float>& w, int n_heads, int head_dim,
                                  int cols) {
  std::vector<float> out(w.size());
  const int half = head_dim / 2;
  for (int h = 0; h < n_heads; ++h)
    for (int j = 0; j < half; ++j)
      for (int s = 0; s < 2; ++s) {
        const float* src = w.data() + static_cast<size_t>(h * head_dim + 2 * j + s) * cols;
        float* dst = out.data() + static_cast<size_t>(h * head_dim + s * half + j) * cols;
        std::memcpy(dst, src, sizeof(float) * cols);
      }
  return out;
}

// Writes model.safetensors; each tensor is F16 when that is exact, F32 otherwise.
class SafetensorsWriter {
 public:
  void add(const std::string& name, std::vector<int64_t> shape, const std::vector<float>& v) {
    bool f16 = true;
    for (float x : v) f16 = f16 && fp16_to_fp32(fp32_to_fp16(x)) == x;
    const size_t begin = data_.size();
    if (f16) {
      for (float x : v) put(fp32_to_fp16(x));
    } else {
      for (float x : v) put(x);
    }
    std::string dims;
    for (int64_t d : shape) {
      if (!dims.empty()) dims += ',';
      dims += std::to_string(d);
    }
    header_ += ",\"" + name + "\":{\"dtype\":\"" + (f16 ? "F16" : "F32") + "\",\"shape\":[" + dims +
               "],\"data_offsets\":[" + std::to_string(begin) + "," + std::to_string(data_.size()) +
               "]}";
  }
  void write(const fs::path& file) const {
    std::string h = "{\"__metadata__\":{\"format\":\"pt\"}" + header_ + "}";
    h.resize((h.size() + 7) / 8 * 8, ' ');
    const uint64_t n = h.size();
    std::ofstream f(file, std::ios::binary);
    f.write(reinterpret_cast<const char*>(&n), 8);
    f.write(h.data(), static_cast<std::streamsize>(h.size()));
    f.write(reinterpret_cast<const char*>(data_.data()),
            static_cast<std::streamsize>(data_.size()));
  }

 private:
  template <class T>
  void put(T x) {
    const auto* p = reinterpret_cast<const uint8_t*>(&x);
    data_.insert(data_.end(), p, p + sizeof(T));
  }
  std::string header_;
  std::vector<uint8_t> data_;
};

// Writes an HF folder holding `m` (a llama-arch GGUF model); `drop` names a tensor to omit.
fs::path write_hf_folder(const LlamaModel& m, const std::string& tag,
                         const std::string& drop = "") {
  const LlamaConfig& c = m.config;
  const fs::path dir =
      fs::temp_directory_path() / ("dsi_hf_" + tag + "_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  std::ofstream(dir / "config.json")
      << "{\"architectures\":[\"LlamaForCausalLM\"],\"model_type\":\"llama\",\"hidden_size\":"
      << c.dim << ",\"intermediate_size\":" << c.ffn_dim << ",\"num_hidden_layers\":" << c.n_layers
      << ",\"num_attention_heads\":" << c.n_heads << ",\"num_key_value_heads\":" << c.n_kv_heads
      << ",\"vocab_size\":" << c.n_vocab << ",\"max_position_embeddings\":" << c.max_context
      << ",\"rms_norm_eps\":" << c.norm_eps << ",\"rope_theta\":" << c.rope_base
      << ",\"rope_scaling\":null,\"tie_word_embeddings\":" << (c.tied_head ? "true" : "false")
      << ",\"torch_dtype\":\"float16\"}";
  SafetensorsWriter st;
  auto add = [&](const std::string& name, std::vector<int64_t> shape, const std::vector<float>& v) {
    if (name != drop) st.add(name, std::move(shape), v);
  };
  const int64_t dim = c.dim, q = c.q_dim(), kv = c.kv_dim(), ff = c.ffn_dim;
  add("model.embed_tokens.weight", {c.n_vocab, dim}, to_floats(m.weights.token_embd));
  add("model.norm.weight", {dim}, m.weights.output_norm);
  if (!c.tied_head) add("lm_head.weight", {c.n_vocab, dim}, to_floats(m.weights.output));
  for (int l = 0; l < c.n_layers; ++l) {
    const LlamaLayerWeights& L = m.weights.layers[l];
    const std::string b = "model.layers." + std::to_string(l) + ".";
    add(b + "input_layernorm.weight", {dim}, L.attn_norm);
    add(b + "self_attn.q_proj.weight", {q, dim},
        unpermute_rows(to_floats(L.wq), c.n_heads, c.head_dim, c.dim));
    add(b + "self_attn.k_proj.weight", {kv, dim},
        unpermute_rows(to_floats(L.wk), c.n_kv_heads, c.head_dim, c.dim));
    add(b + "self_attn.v_proj.weight", {kv, dim}, to_floats(L.wv));
    add(b + "self_attn.o_proj.weight", {dim, q}, to_floats(L.wo));
    add(b + "post_attention_layernorm.weight", {dim}, L.ffn_norm);
    add(b + "mlp.gate_proj.weight", {ff, dim}, to_floats(L.w_gate));
    add(b + "mlp.up_proj.weight", {ff, dim}, to_floats(L.w_up));
    add(b + "mlp.down_proj.weight", {dim, ff}, to_floats(L.w_down));
  }
  st.write(dir / "model.safetensors");
  return dir;
}

class LlamaHf : public ::testing::TestWithParam<const char*> {};

TEST_P(LlamaHf, SafetensorsFolderMatchesGguf) {
  const std::string gguf = gguf_model(GetParam());
  auto model = load_llama_gguf(gguf);
  const fs::path dir = write_hf_folder(*model, fs::path(GetParam()).stem().string());
  LlamaEngineOptions o;
  o.model_path = dir.string();
  o.max_context = 32;
  auto hf = make_llama_engine(o);
  fs::remove_all(dir);
  o.model_path = gguf;
  auto ref = make_llama_engine(o);
  std::vector<Token> seq = {1, 450, 996, 354, 701, 916, 432, 204};
  CancelFlag never;
  Logits a = hf->forward(seq, 8, never), b = ref->forward(seq, 8, never);
  float diff = 0, scale = 0;
  for (size_t i = 0; i < a.data.size(); ++i) {
    diff = std::max(diff, std::abs(a.data[i] - b.data[i]));
    scale = std::max(scale, std::abs(b.data[i]));
  }
  std::printf("    %s as HF safetensors: max|diff| %.3g (logit scale %.3g)\n", GetParam(), diff,
              scale);
  EXPECT_LE(diff, 1e-5f * scale);
}

INSTANTIATE_TEST_SUITE_P(TestModels, LlamaHf, ::testing::Values("tiny-f16", "tiny-f16-untied"),
                         [](const auto& info) {
                           std::string s = info.param;
                           for (char& ch : s) ch = std::isalnum(ch) ? ch : '_';
                           return s;
                         });

TEST(LlamaHfLoader, MissingTensorIsNamed) {
  auto model = load_llama_gguf(gguf_model("tiny-f16"), {0});
  model->config.n_layers = 1;
  model->weights.layers.resize(1);
  const fs::path dir = write_hf_folder(*model, "missing", "model.layers.0.mlp.up_proj.weight");
  std::string msg;
  try {
    load_llama_safetensors(dir.string());
  } catch (const ModelError& e) {
    msg = e.what();
  }
  fs::remove_all(dir);
  EXPECT_NE(msg.find("'model.layers.0.mlp.up_proj.weight' is missing (expected shape [704, 256])"),
            std::string::npos)
      << msg;
}

}  // namespace
}  // namespace dsi
