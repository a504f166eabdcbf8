// CPU attention (kernels/attention.h): per (head, query) a dot product with each visible key,
// a softmax and a weighted sum of values. Scores live in a thread-local buffer.
#include "kernels/attention.h"

#include <cmath>
#include <cstddef>
#include <vector>

namespace dsi::kernels {
namespace {

// q . k over n floats in eight interleaved partial sums (lane l takes d = l, l + 8, ...), then a
// fixed tree: the same roundings for every query, batch and thread count, and a loop the
// compiler turns into vector code.
float dot8(const float* q, const float* k, int n) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int d = 0;
  for (; d + 8 <= n; d += 8) {
    for (int l = 0; l < 8; ++l) acc[l] += q[d + l] * k[d + l];
  }
  for (; d < n; ++d) acc[d % 8] += q[d] * k[d];
  return ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
}

}  // namespace

void attention_cpu(float* out, const float* q, const float* k, const float* v, const uint8_t* mask,
                   int n_q, int n_kv, int q_pos0, int n_heads, int n_kv_heads, int head_dim,
                   int kv_stride, int head_begin, int head_end) {
  thread_local std::vector<float> scores;
  scores.resize(n_kv);
  const int group = n_heads / n_kv_heads;
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  const size_t q_stride = static_cast<size_t>(n_heads) * head_dim;
  for (int h = head_begin; h < head_end; ++h) {
    const int g = h / group;
    for (int i = 0; i < n_q; ++i) {
      const float* qi = q + i * q_stride + static_cast<size_t>(h) * head_dim;
      float* oi = out + i * q_stride + static_cast<size_t>(h) * head_dim;
      const uint8_t* mrow = mask ? mask + static_cast<size_t>(i) * n_kv : nullptr;
      const int last = mask ? n_kv - 1 : q_pos0 + i;  // keys beyond `last` are never visible
      float mx = -INFINITY;
      for (int j = 0; j <= last; ++j) {
        if (mrow && !mrow[j]) continue;
        const float* kj =
            k + static_cast<size_t>(j) * kv_stride + static_cast<size_t>(g) * head_dim;
        const float s = dot8(qi, kj, head_dim) * scale;
        scores[j] = s;
        mx = s > mx ? s : mx;
      }
      double sum = 0;
      for (int j = 0; j <= last; ++j) {
        if (mrow && !mrow[j]) continue;
        scores[j] = std::exp(scores[j] - mx);
        sum += scores[j];
      }
      const float inv = static_cast<float>(1.0 / sum);
      for (int d = 0; d < head_dim; ++d) oi[d] = 0;
      for (int j = 0; j <= last; ++j) {
        if (mrow && !mrow[j]) continue;
        const float p = scores[j] * inv;
        const float* vj =
            v + static_cast<size_t>(j) * kv_stride + static_cast<size_t>(g) * head_dim;
        for (int d = 0; d < head_dim; ++d) oi[d] += p * vj[d];
      }
    }
  }
}

}  // namespace dsi::kernels
