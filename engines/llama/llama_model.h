// Hyperparameters and float32 weights of a Llama-architecture decoder (Llama 2/3, SmolLM2,
// TinyLlama, Mistral, Qwen2 with QKV bias). Quantized files are dequantized at load time;
// this is plain data, filled by a loader (llama_loader.h) or by tests.
#pragma once

#include <string>
#include <vector>

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

// Weights of one decoder block; an empty attn_norm marks a layer that was not loaded (the
// layer-skip drafter loads only the layers it runs).
struct LlamaLayerWeights {
  std::vector<float> attn_norm;  // (dim)
  std::vector<float> wq;         // (n_heads*head_dim, dim)
  std::vector<float> wk;         // (n_kv_heads*head_dim, dim)
  std::vector<float> wv;         // (n_kv_heads*head_dim, dim)
  std::vector<float> bq;         // (n_heads*head_dim) or empty
  std::vector<float> bk;         // (n_kv_heads*head_dim) or empty
  std::vector<float> bv;         // (n_kv_heads*head_dim) or empty
  std::vector<float> wo;         // (dim, n_heads*head_dim)
  std::vector<float> ffn_norm;   // (dim)
  std::vector<float> w_gate;     // (ffn_dim, dim)
  std::vector<float> w_up;       // (ffn_dim, dim)
  std::vector<float> w_down;     // (dim, ffn_dim)

  bool loaded() const { return !attn_norm.empty(); }
};

struct LlamaWeights {
  std::vector<float> token_embd;          // (n_vocab, dim)
  std::vector<LlamaLayerWeights> layers;  // n_layers entries, indexed by the file's layer number
  std::vector<float> output_norm;         // (dim)
  std::vector<float> output;              // (n_vocab, dim); empty when the head is tied

  const float* head() const { return output.empty() ? token_embd.data() : output.data(); }
  size_t bytes() const;  // float storage held, for reports
};

struct LlamaModel {
  LlamaConfig config;
  LlamaWeights weights;
};

}  // namespace dsi
