// Dense layer for a batch of rows: y = x W^T (+ b), i.e. y[r] = W x[r] for every row, with W
// stored row-major as (out, in) like GGUF and PyTorch Linear weights. The CPU reference loop.
#pragma once

namespace dsi::kernels {

// y: (n, out); x: (n, in); w: (out, in); bias: (out) or nullptr. One thread, FP32 sums
// (eight partial sums, kernels/cpu/matmul.cc).
void matmul_cpu(float* y, const float* x, const float* w, const float* bias, int n, int in,
                int out);

}  // namespace dsi::kernels
