#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "kernels/sampling.h"

namespace dsi::kernels {

void probs_from_logits_cpu(float* probs, const float* logits, int vocab, float temperature,
                           int top_k, float top_p) {
  const float mx = *std::max_element(logits, logits + vocab);
  double sum = 0;
  for (int i = 0; i < vocab; ++i) {
    probs[i] = std::exp((logits[i] - mx) / temperature);
    sum += probs[i];
  }
  for (int i = 0; i < vocab; ++i) probs[i] = static_cast<float>(probs[i] / sum);
  const bool cut_k = top_k > 0 && top_k < vocab;
  const bool cut_p = top_p < 1.0f;
  if (!cut_k && !cut_p) return;
  std::vector<int> order(vocab);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return probs[a] > probs[b]; });
  int keep = cut_k ? top_k : vocab;
  if (cut_p) {
    double mass = 0;
    int n = 0;
    while (n < keep) {
      mass += probs[order[n]];
      ++n;
      if (mass >= top_p) break;
    }
    keep = n;
  }
  double kept = 0;
  for (int r = 0; r < keep; ++r) kept += probs[order[r]];
  for (int r = keep; r < vocab; ++r) probs[order[r]] = 0;
  for (int r = 0; r < keep; ++r) probs[order[r]] = static_cast<float>(probs[order[r]] / kept);
}

int32_t sample_cdf_cpu(const float* weights, int vocab, double u) {
  double total = 0;
  for (int i = 0; i < vocab; ++i) total += weights[i];
  const double target = u * total;
  double acc = 0;
  int32_t last = -1;
  for (int i = 0; i < vocab; ++i) {
    if (weights[i] <= 0) continue;
    acc += weights[i];
    last = i;
    if (acc > target) return i;
  }
  return last;  // rounding left u * total at the very end
}

}  // namespace dsi::kernels
