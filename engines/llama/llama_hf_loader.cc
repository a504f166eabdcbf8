// Hugging Face folder -> LlamaModel (engines/llama/llama_hf_loader.h). A Linear weight of shape
// [out, in] is row-major (out, in), the engine's matmul layout, so it is used where it lies.
#include "engines/llama/llama_hf_loader.h"

#include <filesystem>
#include <stdexcept>
#include <string>

#include "common/error.h"
#include "model/safetensors.h"

namespace dsi {
namespace {

std::string shape_str(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

class HfReader {
 public:
  HfReader(const SafetensorsModel& m, std::string dir) : m_(m), dir_(std::move(dir)) {}

  // `shape` as HF writes it (row-major, last dimension contiguous).
  std::vector<float> read(const std::string& name, const std::vector<int64_t>& shape) const {
    return to_float(find(name, shape));
  }
  const SafetensorsTensor& find(const std::string& name, const std::vector<int64_t>& shape) const {
    const SafetensorsTensor* t = m_.find(name);
    if (t == nullptr) {
      throw ModelError(dir_ + ": tensor '" + name + "' is missing (expected shape " +
                       shape_str(shape) + ")");
    }
    if (t->shape != shape) {
      throw ModelError(dir_ + ": tensor '" + name + "' has shape " + shape_str(t->shape) +
                       ", expected " + shape_str(shape));
    }
    return *t;
  }
  bool has(const std::string& name) const { return m_.find(name) != nullptr; }

  // A Linear weight [rows, cols] used where it lies in the mapping, in its own dtype.
  kernels::WeightMatrix matrix(const std::string& name, int64_t rows, int64_t cols) const {
    const SafetensorsTensor& t = find(name, {rows, cols});
    if (t.type != GgmlType::F32 && t.type != GgmlType::F16 && t.type != GgmlType::BF16) {
      throw ModelError(dir_ + ": tensor '" + name + "' has dtype " + t.dtype +
                       ", which the llama engine cannot compute with (F32, F16, BF16)");
    }
    return kernels::weight_matrix(t.type, t.data, rows, cols);
  }

 private:
  std::vector<float> to_float(const SafetensorsTensor& t) const {
    // The tensor belongs to one of the shards; each converts only its own tensors.
    for (const auto& f : m_.files()) {
      if (f->find(t.name) == &t) return f->to_float(t);
    }
    throw ModelError(dir_ + ": tensor '" + t.name + "' has no owning file");
  }
  const SafetensorsModel& m_;
  std::string dir_;
};

}  // namespace

std::shared_ptr<LlamaModel> load_llama_safetensors(const std::string& dir,
                                                   const std::vector<int>& layers) {
  const std::string config_path = (std::filesystem::path(dir) / "config.json").string();
  const HfConfig hf = HfConfig::load(config_path);
  if (hf.model_type != "llama" && hf.model_type != "mistral" && hf.model_type != "qwen2") {
    throw ModelError(config_path + ": model_type '" + hf.model_type +
                     "' is not supported by the llama engine (llama, mistral, qwen2)");
  }
  if (!hf.rope_scaling_type.empty()) {
    throw ModelError(config_path + ": rope_scaling '" + hf.rope_scaling_type +
                     "' is not supported by the llama engine");
  }
  auto m = std::make_shared<LlamaModel>();
  LlamaConfig& c = m->config;
  c.arch = hf.model_type;
  c.n_vocab = hf.vocab_size;
  c.dim = hf.hidden_size;
  c.n_layers = hf.num_hidden_layers;
  c.n_heads = hf.num_attention_heads;
  c.n_kv_heads = hf.num_key_value_heads;
  c.head_dim = hf.head_dim;
  c.rope_dim = hf.head_dim;
  c.ffn_dim = hf.intermediate_size;
  c.norm_eps = static_cast<float>(hf.rms_norm_eps);
  c.rope_base = static_cast<float>(hf.rope_theta);
  c.rope_layout = kernels::RopeLayout::kHalfSplit;
  c.max_context = hf.max_position_embeddings;

  const std::shared_ptr<const SafetensorsModel> st = SafetensorsModel::open_dir(dir);
  const HfReader r(*st, dir);
  c.tied_head = hf.tie_word_embeddings || !r.has("lm_head.weight");
  c.qkv_bias = hf.attention_bias || r.has("model.layers.0.self_attn.q_proj.bias");

  std::vector<bool> keep(c.n_layers, layers.empty());
  for (int l : layers) {
    if (l < 0 || l >= c.n_layers) {
      throw std::invalid_argument("layer " + std::to_string(l) + " is not in " + dir + " (0.." +
                                  std::to_string(c.n_layers - 1) + ")");
    }
    keep[l] = true;
  }
  const int64_t dim = c.dim, q = c.q_dim(), kv = c.kv_dim(), ff = c.ffn_dim, nv = c.n_vocab;
  LlamaWeights& w = m->weights;
  w.token_embd = r.matrix("model.embed_tokens.weight", nv, dim);
  w.output_norm = r.read("model.norm.weight", {dim});
  if (!c.tied_head) w.output = r.matrix("lm_head.weight", nv, dim);
  w.layers.resize(c.n_layers);
  for (int l = 0; l < c.n_layers; ++l) {
    if (!keep[l]) continue;
    const std::string b = "model.layers." + std::to_string(l) + ".";
    LlamaLayerWeights& L = w.layers[l];
    L.attn_norm = r.read(b + "input_layernorm.weight", {dim});
    L.wq = r.matrix(b + "self_attn.q_proj.weight", q, dim);
    L.wk = r.matrix(b + "self_attn.k_proj.weight", kv, dim);
    L.wv = r.matrix(b + "self_attn.v_proj.weight", kv, dim);
    if (c.qkv_bias) {
      L.bq = r.read(b + "self_attn.q_proj.bias", {q});
      L.bk = r.read(b + "self_attn.k_proj.bias", {kv});
      L.bv = r.read(b + "self_attn.v_proj.bias", {kv});
    }
    L.wo = r.matrix(b + "self_attn.o_proj.weight", dim, q);
    L.ffn_norm = r.read(b + "post_attention_layernorm.weight", {dim});
    L.w_gate = r.matrix(b + "mlp.gate_proj.weight", ff, dim);
    L.w_up = r.matrix(b + "mlp.up_proj.weight", ff, dim);
    L.w_down = r.matrix(b + "mlp.down_proj.weight", dim, ff);
  }
  w.storage.push_back(st);  // the matrices point into its mappings
  return m;
}

}  // namespace dsi
