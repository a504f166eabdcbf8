// Helpers of the llama engine tests (CPU and GPU): random weights for an in-memory model, and
// a cancel that lands between two layers of a forward.
#pragma once

#include <chrono>
#include <cmath>
#include <condition_variable>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

#include "common/cancel.h"
#include "engines/llama/llama_model.h"
#include "tests/quant_test_data.h"

namespace dsi {

// Fills every tensor that m.config calls for (QKV biases when qkv_bias, an output matrix when
// the head is untied) from a seeded normal distribution scaled so that activations stay O(1).
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
  w.token_embd = w.own(fill(static_cast<size_t>(c.n_vocab) * c.dim, 0, 0.5f), c.n_vocab, c.dim);
  for (int l = 0; l < c.n_layers; ++l) {
    LlamaLayerWeights L;
    L.attn_norm = fill(c.dim, 1, 0.1f);
    L.wq = w.own(fill(static_cast<size_t>(c.q_dim()) * c.dim, 0, s), c.q_dim(), c.dim);
    L.wk = w.own(fill(static_cast<size_t>(c.kv_dim()) * c.dim, 0, s), c.kv_dim(), c.dim);
    L.wv = w.own(fill(static_cast<size_t>(c.kv_dim()) * c.dim, 0, s), c.kv_dim(), c.dim);
    if (c.qkv_bias) {
      L.bq = fill(c.q_dim(), 0, 0.1f);
      L.bk = fill(c.kv_dim(), 0, 0.1f);
      L.bv = fill(c.kv_dim(), 0, 0.1f);
    }
    L.wo = w.own(fill(static_cast<size_t>(c.dim) * c.q_dim(), 0, s), c.dim, c.q_dim());
    L.ffn_norm = fill(c.dim, 1, 0.1f);
    L.w_gate = w.own(fill(static_cast<size_t>(c.ffn_dim) * c.dim, 0, s), c.ffn_dim, c.dim);
    L.w_up = w.own(fill(static_cast<size_t>(c.ffn_dim) * c.dim, 0, s), c.ffn_dim, c.dim);
    L.w_down = w.own(fill(static_cast<size_t>(c.dim) * c.ffn_dim, 0,
                          1.0f / std::sqrt(static_cast<float>(c.ffn_dim))),
                     c.dim, c.ffn_dim);
    w.layers.push_back(std::move(L));
  }
  w.output_norm = fill(c.dim, 1, 0.1f);
  if (!c.tied_head) {
    w.output = w.own(fill(static_cast<size_t>(c.n_vocab) * c.dim, 0, 0.3f), c.n_vocab, c.dim);
  }
}

// Fills every tensor that m.config calls for (QKV biases, an untied head) with random values:
// the matrices of type t (kernels/quant_test), norms near 1 and biases near 0.
inline void fill_typed_llama(LlamaModel& m, GgmlType t) {
  const LlamaConfig& c = m.config;
  uint32_t seed = 1;
  LlamaWeights& w = m.weights;
  auto mat = [&](int64_t rows, int64_t cols) {
    return w.own(t, kernels::quant_test::random_matrix(t, rows, cols, seed++), rows, cols);
  };
  auto vec = [&](int64_t n, float mean) {
    auto v = kernels::quant_test::random_floats(static_cast<size_t>(n), seed++);
    for (float& x : v) x = mean + 0.1f * x;
    return v;
  };
  w.token_embd = mat(c.n_vocab, c.dim);
  for (int l = 0; l < c.n_layers; ++l) {
    LlamaLayerWeights L;
    L.attn_norm = vec(c.dim, 1);
    L.wq = mat(c.q_dim(), c.dim);
    L.wk = mat(c.kv_dim(), c.dim);
    L.wv = mat(c.kv_dim(), c.dim);
    L.bq = vec(c.q_dim(), 0);
    L.bk = vec(c.kv_dim(), 0);
    L.bv = vec(c.kv_dim(), 0);
    L.wo = mat(c.dim, c.q_dim());
    L.ffn_norm = vec(c.dim, 1);
    L.w_gate = mat(c.ffn_dim, c.dim);
    L.w_up = mat(c.ffn_dim, c.dim);
    L.w_down = mat(c.dim, c.ffn_dim);
    w.layers.push_back(std::move(L));
  }
  w.output_norm = vec(c.dim, 1);
  w.output = mat(c.n_vocab, c.dim);
}

// A cancel raised by another thread between two layers, after the layer the test chooses,
// whatever the machine's load. The engine's after_layer hook calls layer_done(slot); while
// armed, at slot `at` it asks the canceller thread to raise `flag` and holds the forward until
// the flag is up. `done` lists the slots that reached the hook (the forward's thread only).
class CancelBetweenLayers {
 public:
  CancelBetweenLayers(CancelFlag& flag, int at)
      : flag_(flag), at_(at), thread_([this] { run(); }) {}
  ~CancelBetweenLayers() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      asked_ = true;  // wakes the thread if no forward ever asked
    }
    cv_.notify_all();
    thread_.join();
  }
  CancelBetweenLayers(const CancelBetweenLayers&) = delete;
  CancelBetweenLayers& operator=(const CancelBetweenLayers&) = delete;

  void layer_done(int slot) {
    done.push_back(slot);
    if (!armed || slot != at_) return;
    std::unique_lock<std::mutex> lk(mu_);
    asked_ = true;
    cv_.notify_all();
    cv_.wait_for(lk, std::chrono::seconds(30), [&] { return raised_; });
  }

  bool armed = false;
  std::vector<int> done;

 private:
  void run() {
    std::unique_lock<std::mutex> lk(mu_);
    cv_.wait(lk, [&] { return asked_; });
    flag_.cancel();
    raised_ = true;
    cv_.notify_all();
  }

  CancelFlag& flag_;
  const int at_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool asked_ = false, raised_ = false;
  std::thread thread_;  // last: starts once the members above exist
};

}  // namespace dsi
