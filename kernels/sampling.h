// Turning logits into the distribution that sampling draws from, and drawing from it. CPU
// reference; the target and the drafter apply exactly the same transform (temperature, then
// top-k, then top-p), as the speculative-sampling proof requires.
#pragma once

#include <cstdint>

namespace dsi::kernels {

// probs[i] = softmax(logits / temperature) restricted to the top_k largest (0 = all) and to
// the smallest set of largest probabilities whose mass reaches top_p, renormalised. Ties at
// the cut keep the lower index. temperature must be > 0.
void probs_from_logits_cpu(float* probs, const float* logits, int vocab, float temperature,
                           int top_k, float top_p);

// Inverse-CDF draw: the first index whose cumulative weight exceeds u * sum(weights).
// Weights need not be normalised; zero weights are never drawn.
int32_t sample_cdf_cpu(const float* weights, int vocab, double u);

}  // namespace dsi::kernels
