// GGUF -> LlamaModel (engines/llama/llama_loader.h). A GGUF 2-D weight with ne = [in, out]
// is row-major (out, in), which is the layout the engine's matmul takes, so matrices are used
// where they lie in the mapping, in their own types.
#include "engines/llama/llama_loader.h"

#include <stdexcept>
#include <string>
#include <utility>

#include "common/error.h"

namespace dsi {
namespace {

std::string shape_str(const std::vector<int64_t>& ne) {
  std::string s = "[";
  for (size_t i = 0; i < ne.size(); ++i) s += (i ? ", " : "") + std::to_string(ne[i]);
  return s + "]";
}

// Drops trailing 1s so that a (n) vector stored as [n, 1] still matches.
std::vector<int64_t> squeeze(std::vector<int64_t> ne) {
  while (ne.size() > 1 && ne.back() == 1) ne.pop_back();
  return ne;
}

class TensorReader {
 public:
  explicit TensorReader(const GgufFile& f) : f_(f) {}

  // The tensor `name`, checked against `ne`, the expected shape in GGUF order (ne[0]
  // contiguous).
  const GgufTensor& find(const std::string& name, std::vector<int64_t> ne) const {
    const GgufTensor* t = f_.find(name);
    if (t == nullptr) {
      throw ModelError(f_.path() + ": tensor '" + name + "' is missing (expected shape " +
                       shape_str(ne) + ")");
    }
    if (squeeze(t->ne) != squeeze(ne)) {
      throw ModelError(f_.path() + ": tensor '" + name + "' has shape " + shape_str(t->ne) +
                       ", expected " + shape_str(ne) + " (GGUF order, ne[0] contiguous)");
    }
    if (!ggml_type_supported(t->type)) {
      throw ModelError(f_.path() + ": tensor '" + name + "' has unsupported type " +
                       ggml_type_describe(t->type) + " (the llama engine computes with " +
                       ggml_supported_types() + ")");
    }
    return *t;
  }

  // A small tensor (norm, bias) as float32.
  std::vector<float> floats(const std::string& name, std::vector<int64_t> ne) const {
    return f_.dequantize(find(name, std::move(ne)));
  }

  // A matrix [cols, rows] (GGUF order) used where it lies in the file.
  kernels::WeightMatrix matrix(const std::string& name, int64_t cols, int64_t rows) const {
    const GgufTensor& t = find(name, {cols, rows});
    const kernels::WeightMatrix m = kernels::weight_matrix(t.type, t.data, rows, cols);
    if (m.bytes() != t.nbytes) {
      throw ModelError(f_.path() + ": tensor '" + name + "' holds " + std::to_string(t.nbytes) +
                       " bytes, expected " + std::to_string(m.bytes()));
    }
    return m;
  }

 private:
  const GgufFile& f_;
};

int positive(const GgufFile& f, const std::string& key, int64_t v) {
  if (v <= 0 || v > (1 << 24)) {
    throw ModelError(f.path() + ": '" + key + "' = " + std::to_string(v) + " is out of range");
  }
  return static_cast<int>(v);
}

}  // namespace

LlamaConfig llama_config_from_gguf(const GgufFile& f) {
  LlamaConfig c;
  c.arch = f.get_string("general.architecture");
  if (c.arch != "llama" && c.arch != "qwen2") {
    throw ModelError(f.path() + ": architecture '" + c.arch +
                     "' is not supported by the llama engine (llama, qwen2)");
  }
  const std::string p = c.arch + ".";
  auto get = [&](const std::string& k) { return positive(f, p + k, f.get_int(p + k)); };
  c.dim = get("embedding_length");
  c.n_layers = get("block_count");
  c.n_heads = get("attention.head_count");
  c.n_kv_heads = f.has(p + "attention.head_count_kv") ? get("attention.head_count_kv") : c.n_heads;
  c.ffn_dim = get("feed_forward_length");
  c.max_context = get("context_length");
  c.norm_eps = static_cast<float>(f.get_float(p + "attention.layer_norm_rms_epsilon"));
  c.rope_base = static_cast<float>(f.get_float(p + "rope.freq_base", 10000.0));
  c.head_dim = f.has(p + "attention.key_length") ? get("attention.key_length") : c.dim / c.n_heads;
  c.rope_dim = f.has(p + "rope.dimension_count") ? get("rope.dimension_count") : c.head_dim;
  // llama.cpp's rope type per architecture: "normal" (adjacent pairs; the converter permutes
  // HF q/k rows into it) for llama, "neox" (half split, HF layout as is) for qwen2.
  c.rope_layout =
      c.arch == "qwen2" ? kernels::RopeLayout::kHalfSplit : kernels::RopeLayout::kAdjacentPairs;
  if (c.n_heads % c.n_kv_heads != 0) {
    throw ModelError(f.path() + ": head_count " + std::to_string(c.n_heads) +
                     " is not a multiple of head_count_kv " + std::to_string(c.n_kv_heads));
  }
  if (c.rope_dim % 2 != 0 || c.rope_dim > c.head_dim) {
    throw ModelError(f.path() + ": rope.dimension_count " + std::to_string(c.rope_dim) +
                     " does not fit head_dim " + std::to_string(c.head_dim));
  }
  if (f.has(p + "attention.value_length") &&
      f.get_int(p + "attention.value_length") != c.head_dim) {
    throw ModelError(f.path() + ": value_length differs from key_length (unsupported)");
  }
  const std::string scaling =
      f.has(p + "rope.scaling.type") ? f.get_string(p + "rope.scaling.type") : std::string("none");
  if ((scaling != "none" && f.get_float(p + "rope.scaling.factor", 1.0) != 1.0) ||
      f.find("rope_freqs.weight") != nullptr) {
    throw ModelError(f.path() + ": rope scaling ('" + scaling +
                     "' or rope_freqs.weight) is not supported by the llama engine");
  }
  const GgufTensor* embd = f.find("token_embd.weight");
  if (embd == nullptr) throw ModelError(f.path() + ": tensor 'token_embd.weight' is missing");
  if (embd->ne.size() != 2 || embd->ne[0] != c.dim) {
    throw ModelError(f.path() + ": tensor 'token_embd.weight' has shape " + shape_str(embd->ne) +
                     ", expected [" + std::to_string(c.dim) + ", n_vocab]");
  }
  c.n_vocab = positive(f, "token_embd.weight ne[1]", embd->ne[1]);
  c.tied_head = f.find("output.weight") == nullptr;
  c.qkv_bias = f.find("blk.0.attn_q.bias") != nullptr;
  return c;
}

std::shared_ptr<LlamaModel> load_llama_gguf(std::shared_ptr<const GgufFile> file,
                                            const std::vector<int>& layers) {
  const GgufFile& f = *file;
  auto m = std::make_shared<LlamaModel>();
  LlamaConfig& c = m->config;
  c = llama_config_from_gguf(f);
  std::vector<bool> keep(c.n_layers, layers.empty());
  for (int l : layers) {
    if (l < 0 || l >= c.n_layers) {
      throw std::invalid_argument("layer " + std::to_string(l) + " is not in " + f.path() +
                                  " (0.." + std::to_string(c.n_layers - 1) + ")");
    }
    keep[l] = true;
  }
  const TensorReader r(f);
  const int64_t dim = c.dim, q = c.q_dim(), kv = c.kv_dim(), ff = c.ffn_dim, nv = c.n_vocab;
  LlamaWeights& w = m->weights;
  w.token_embd = r.matrix("token_embd.weight", dim, nv);
  w.output_norm = r.floats("output_norm.weight", {dim});
  if (!c.tied_head) w.output = r.matrix("output.weight", dim, nv);
  w.layers.resize(c.n_layers);
  for (int l = 0; l < c.n_layers; ++l) {
    if (!keep[l]) continue;
    const std::string b = "blk." + std::to_string(l) + ".";
    LlamaLayerWeights& L = w.layers[l];
    L.attn_norm = r.floats(b + "attn_norm.weight", {dim});
    L.wq = r.matrix(b + "attn_q.weight", dim, q);
    L.wk = r.matrix(b + "attn_k.weight", dim, kv);
    L.wv = r.matrix(b + "attn_v.weight", dim, kv);
    if (c.qkv_bias) {
      L.bq = r.floats(b + "attn_q.bias", {q});
      L.bk = r.floats(b + "attn_k.bias", {kv});
      L.bv = r.floats(b + "attn_v.bias", {kv});
    }
    L.wo = r.matrix(b + "attn_output.weight", q, dim);
    L.ffn_norm = r.floats(b + "ffn_norm.weight", {dim});
    L.w_gate = r.matrix(b + "ffn_gate.weight", dim, ff);
    L.w_up = r.matrix(b + "ffn_up.weight", dim, ff);
    L.w_down = r.matrix(b + "ffn_down.weight", ff, dim);
  }
  w.storage.push_back(std::move(file));  // the matrices point into its mapping
  return m;
}

std::shared_ptr<LlamaModel> load_llama_gguf(const std::string& path,
                                            const std::vector<int>& layers) {
  return load_llama_gguf(std::shared_ptr<const GgufFile>(GgufFile::open(path)), layers);
}

}  // namespace dsi
