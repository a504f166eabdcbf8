// LlamaWeights helpers (engines/llama/llama_model.h).
#include "engines/llama/llama_model.h"

#include <stdexcept>
#include <string>
#include <utility>

namespace dsi {

size_t LlamaWeights::bytes() const {
  size_t n = token_embd.bytes() + output.bytes() + output_norm.size() * sizeof(float);
  for (const auto& l : layers) {
    for (const auto* m : {&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down}) {
      n += m->bytes();
    }
    for (const auto* v : {&l.attn_norm, &l.bq, &l.bk, &l.bv, &l.ffn_norm}) {
      n += v->size() * sizeof(float);
    }
  }
  return n;
}

kernels::WeightMatrix LlamaWeights::own(std::vector<float> values, int64_t rows, int64_t cols) {
  auto held = std::make_shared<std::vector<float>>(std::move(values));
  const auto m = kernels::weight_matrix(GgmlType::F32, held->data(), rows, cols);
  if (held->size() != static_cast<size_t>(rows * cols)) {
    throw std::invalid_argument("LlamaWeights::own: " + std::to_string(held->size()) +
                                " values for a " + std::to_string(rows) + " x " +
                                std::to_string(cols) + " matrix");
  }
  storage.push_back(std::move(held));
  return m;
}

kernels::WeightMatrix LlamaWeights::own(GgmlType type, std::vector<uint8_t> bytes, int64_t rows,
                                        int64_t cols) {
  auto held = std::make_shared<std::vector<uint8_t>>(std::move(bytes));
  const auto m = kernels::weight_matrix(type, held->data(), rows, cols);
  if (held->size() != m.bytes()) {
    throw std::invalid_argument("LlamaWeights::own: " + std::to_string(held->size()) +
                                " bytes for a " + std::to_string(rows) + " x " +
                                std::to_string(cols) + " matrix of " + ggml_type_name(type));
  }
  storage.push_back(std::move(held));
  return m;
}

std::vector<float> to_floats(const kernels::WeightMatrix& w) {
  std::vector<float> out(static_cast<size_t>(w.rows * w.cols));
  for (int64_t r = 0; r < w.rows; ++r) kernels::weight_row(w, r, out.data() + r * w.cols);
  return out;
}

}  // namespace dsi
