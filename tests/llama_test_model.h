// Random llama weights for engine tests (CPU and GPU): fills every tensor that m.config
// calls for (QKV biases when qkv_bias, an output matrix when the head is untied) from a
// seeded normal distribution scaled so that activations stay O(1).
#pragma once

#include <cmath>
#include <random>
#include <vector>

#include "engines/llama/llama_model.h"

namespace dsi {

inline void fill_random_llama(LlamaModel& m, uint32_t seed) {
  const LlamaConfig& c = m.config;
  std::mt19937 rng(seed);
  auto fill = [&](size_t n, float mean, float sd) {
    std::normal_distribution<float> d(mean, sd);
    std::vector<float> v(n);
    for (auto& x : v) x = d(rng);
    return v;
  };
  const float s = 1.0f / std::sqrt(static_cast<float>(c.dim));
  LlamaWeights& w = m.weights;
  w.token_embd = fill(static_cast<size_t>(c.n_vocab) * c.dim, 0, 0.5f);
  for (int l = 0; l < c.n_layers; ++l) {
    LlamaLayerWeights L;
    L.attn_norm = fill(c.dim, 1, 0.1f);
    L.wq = fill(static_cast<size_t>(c.q_dim()) * c.dim, 0, s);
    L.wk = fill(static_cast<size_t>(c.kv_dim()) * c.dim, 0, s);
    L.wv = fill(static_cast<size_t>(c.kv_dim()) * c.dim, 0, s);
    if (c.qkv_bias) {
      L.bq = fill(c.q_dim(), 0, 0.1f);
      L.bk = fill(c.kv_dim(), 0, 0.1f);
      L.bv = fill(c.kv_dim(), 0, 0.1f);
    }
    L.wo = fill(static_cast<size_t>(c.dim) * c.q_dim(), 0, s);
    L.ffn_norm = fill(c.dim, 1, 0.1f);
    L.w_gate = fill(static_cast<size_t>(c.ffn_dim) * c.dim, 0, s);
    L.w_up = fill(static_cast<size_t>(c.ffn_dim) * c.dim, 0, s);
    L.w_down = fill(static_cast<size_t>(c.dim) * c.ffn_dim, 0,
                    1.0f / std::sqrt(static_cast<float>(c.ffn_dim)));
    w.layers.push_back(std::move(L));
  }
  w.output_norm = fill(c.dim, 1, 0.1f);
  if (!c.tied_head) w.output = fill(static_cast<size_t>(c.n_vocab) * c.dim, 0, 0.3f);
}

}  // namespace dsi
