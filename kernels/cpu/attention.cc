// CPU attention (kernels/attention.h): per (head, query) a dot product with each visible key,
// a softmax and a weighted sum of values. Scores live in a thread-local buffer.
#include "kernels/attention.h"

#include <cmath>
#include <cstddef>
#include <vector>

namespace dsi::kernels {

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
        float s = 0;
        for (int d = 0; d < head_dim; ++d) s += qi[d] * kj[d];
        s *= scale;
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
