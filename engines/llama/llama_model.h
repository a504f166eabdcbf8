// Hyperparameters and weights of a Llama-architecture decoder (Llama 2/3, SmolLM2, TinyLlama,
// Mistral, Qwen2 with QKV bias). Weight matrices stay in the file's types, where the file lies
// (a read-only mapping shared by every rank on the node); this is plain data, filled by a loader
// (llama_loader.h) or by tests.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kernels/qmatmul.h"
#include "kernels/rope.h"

namespace dsi {

struct LlamaConfig {
  std::string arch = "llama";  // general.architecture
  int n_vocab = 0;
  int dim = 0;       // model width (embedding_length)
  int n_layers = 0;  // layers in the file (block_count)
  int n_heads = 0;
  int n_kv_heads = 0;  // grouped-query attention: n_heads is a multiple of it
  int head_dim = 0;
  int rope_dim = 0;  // rotated dimensions per head (== head_dim unless partial rotary)
  int ffn_dim = 0;
  float norm_eps = 1e-5f;
  float rope_base = 10000.0f;
  kernels::RopeLayout rope_layout = kernels::RopeLayout::kAdjacentPairs;
  bool tied_head = false;  // LM head is token_embd (no output.weight)
  bool qkv_bias = false;   // Qwen2
  int max_context = 0;     // context_length

  int q_dim() const { return n_heads * head_dim; }
  int kv_dim() const { return n_kv_heads * head_dim; }
};

// Weights of one decoder block. The matrices are used in place, in the file's types
// (kernels/qmatmul.h); norms and biases are small and held as float32. An empty attn_norm marks
// a layer that was not loaded (the layer-skip drafter loads only the layers it runs).
struct LlamaLayerWeights {
  std::vector<float> attn_norm;  // (dim)
  kernels::WeightMatrix wq;      // (n_heads*head_dim, dim)
  kernels::WeightMatrix wk;      // (n_kv_heads*head_dim, dim)
  kernels::WeightMatrix wv;      // (n_kv_heads*head_dim, dim)
  std::vector<float> bq;         // (n_heads*head_dim) or empty
  std::vector<float> bk;         // (n_kv_heads*head_dim) or empty
  std::vector<float> bv;         // (n_kv_heads*head_dim) or empty
  kernels::WeightMatrix wo;      // (dim, n_heads*head_dim)
  std::vector<float> ffn_norm;   // (dim)
  kernels::WeightMatrix w_gate;  // (ffn_dim, dim)
  kernels::WeightMatrix w_up;    // (ffn_dim, dim)
  kernels::WeightMatrix w_down;  // (dim, ffn_dim)

  bool loaded() const { return !attn_norm.empty(); }
};

struct LlamaWeights {
  kernels::WeightMatrix token_embd;       // (n_vocab, dim)
  std::vector<LlamaLayerWeights> layers;  // n_layers entries, indexed by the file's layer number
  std::vector<float> output_norm;         // (dim)
  kernels::WeightMatrix output;           // (n_vocab, dim); empty when the head is tied

  // What the matrices point into (a mapped model file, or buffers made by `own`); shared by
  // every engine that shares the model, so the mapping lives as long as one of them.
  std::vector<std::shared_ptr<const void>> storage;

  const kernels::WeightMatrix& head() const { return output.empty() ? token_embd : output; }
  // Bytes of matrix data a forward through every loaded layer reads (norms and biases are
  // included; they are float32).
  size_t bytes() const;
  // A float32 (rows, cols) matrix over `values`, which the weights then keep alive.
  kernels::WeightMatrix own(std::vector<float> values, int64_t rows, int64_t cols);
  // A matrix of `type` over raw bytes (ggml_row_size(type, cols) per row), kept alive likewise.
  kernels::WeightMatrix own(GgmlType type, std::vector<uint8_t> bytes, int64_t rows, int64_t cols);
};

// The matrix as float32, row after row (tests and conversions; a forward never does this).
std::vector<float> to_floats(const kernels::WeightMatrix& w);

struct LlamaModel {
  LlamaConfig config;
  LlamaWeights weights;
};

}  // namespace dsi
