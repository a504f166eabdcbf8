// Greedy token choice over a row of logits. CPU reference; the CUDA twin lives in
// kernels/cuda/argmax.cu.
#pragma once

#include <cstdint>

namespace dsi::kernels {

// For each of the n rows of x (row-major, n x vocab) writes the index of its largest value
// to out[row]; ties go to the lowest index, as in every reference implementation.
void argmax_cpu(int32_t* out, const float* x, int n, int vocab);

}  // namespace dsi::kernels
