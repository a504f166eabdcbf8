// Greedy token choice over a row of logits. CPU reference; the CUDA twin lives in
// kernels/cuda/argmax.cu and picks the same index for every input (kernels/argmax_cuda.h).
#pragma once

#include <cstdint>

namespace dsi::kernels {

// For each of the n rows of x (row-major, n x vocab) writes the index of its largest value
// to out[row]; ties go to the lowest index, as in every reference implementation. Precisely:
// index 0 is kept unless a later value compares greater than the best so far, so NaNs are
// never chosen except at index 0 (a NaN there wins: nothing compares greater than it), and a
// row of equal values (-inf included) gives 0.
void argmax_cpu(int32_t* out, const float* x, int n, int vocab);

}  // namespace dsi::kernels
