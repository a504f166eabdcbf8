// Random-weight llama models of any shape, written as GGUF with a byte-fallback SPM tokenizer
// of the model's vocabulary size, so the file loads through load_llama_gguf and
// Tokenizer::from_gguf like a real one. For benchmarks and tests of shapes no one ships
// (`dsi make-model`); the text such a model writes is meaningless.
//
// Weights follow the scaled-normal recipe of the stand-in models of the outside test data
// (made with llama.cpp; tests/test_data.h), chosen so that greedy decoding does not collapse
// into one repeated token:
//   token_embd ~ N(0, 0.05^2); attn_q/k/v/output, ffn_gate/up ~ N(0, 1/dim);
//   ffn_down ~ N(0, 1/ffn); output (untied only) ~ N(0, 0.15^2); norms ~ 1 + 0.1 N(0, 1).
// Each tensor draws from its own stream (seed, tensor name), so files of one seed hold the same
// weights whatever the element type.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kernels/ggml_type.h"
#include "model/gguf_writer.h"

namespace dsi {

struct RandomModelSpec {
  int dim = 256;
  int n_layers = 4;
  int n_heads = 8;
  int n_kv_heads = 4;
  int ffn_dim = 704;
  int n_vocab = 1024;  // at least 259 (3 specials + 256 byte tokens)
  int context = 2048;
  float rope_base = 10000.0f;
  float norm_eps = 1e-5f;
  GgmlType type = GgmlType::F16;  // 2-D weights; norm vectors are always F32
  bool tied_head = true;          // false: a separate output.weight
  uint64_t seed = 1;
  std::string name = "random";  // general.name
};

// Named shapes: "tiny" (the shape of the outside test data's stand-in models: dim 256, 4 layers,
// 8/4 heads, ffn 704; vocab 1024), "llama-1b" (TinyLlama 1.1B: dim 2048, 22 layers, 32/4 heads,
// ffn 5632, vocab 32000, untied), "llama-7b" (Llama 2 7B: 4096, 32 layers, 32/32 heads, ffn
// 11008, vocab 32000, untied), "llama-3b" (Open LLaMA 3B shape: 3200, 26, 32/32, 8640, 32000).
// Throws std::invalid_argument for another name.
RandomModelSpec random_model_shape(const std::string& name);

// Throws std::invalid_argument naming the field for an inconsistent spec (heads not dividing
// dim, kv heads not dividing heads, a dimension not a multiple of 32 for a quantized type...).
void check_random_model_spec(const RandomModelSpec& spec);

// The writer with all metadata, tokenizer and tensors (filled lazily when written).
GgufWriter random_model_writer(const RandomModelSpec& spec);

// Parameters in the model (embedding, blocks, head when untied).
int64_t random_model_params(const RandomModelSpec& spec);

}  // namespace dsi
