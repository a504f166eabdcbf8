// Dense layer for a batch of rows: y = x W^T (+ b), i.e. y[r] = W x[r] for every row, with W
// stored row-major as (out, in) like GGUF and PyTorch Linear weights. CPU version on OpenBLAS.
#pragma once

namespace dsi::kernels {

// y: (n, out); x: (n, in); w: (out, in); bias: (out) or nullptr. Uses cblas_sgemv for n == 1
// and cblas_sgemm otherwise; the number of BLAS threads is the caller's (set_blas_threads).
void matmul_cpu(float* y, const float* x, const float* w, const float* bias, int n, int in,
                int out);

// Sets OpenBLAS's thread count. OpenBLAS keeps one process-wide setting, so an engine calls
// this before its own forward.
void set_blas_threads(int threads);

}  // namespace dsi::kernels
