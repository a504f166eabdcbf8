// LlamaWeights helpers (engines/llama/llama_model.h).
#include "engines/llama/llama_model.h"

namespace dsi {

size_t LlamaWeights::bytes() const {
  size_t n = token_embd.size() + output_norm.size() + output.size();
  for (const auto& l : layers) {
    for (const auto* v : {&l.attn_norm, &l.wq, &l.wk, &l.wv, &l.bq, &l.bk, &l.bv, &l.wo,
                          &l.ffn_norm, &l.w_gate, &l.w_up, &l.w_down}) {
      n += v->size();
    }
  }
  return n * sizeof(float);
}

}  // namespace dsi
