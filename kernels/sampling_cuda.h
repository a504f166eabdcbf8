// CUDA twins of probs_from_logits_cpu and sample_cdf_cpu (kernels/sampling.h): same contracts,
// device pointers, launchers never synchronise.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace dsi::kernels {

// probs_from_logits_cpu on each of n_rows rows of `vocab` logits (row-major; probs may not
// alias logits). With a top-k or top-p cut it needs temporary device memory (about 24 bytes
// per element plus CUB's sort storage), which it takes with cudaMallocAsync on `stream` and
// returns with cudaFreeAsync on it, so the device must support stream-ordered allocation
// (every GPU of arch 80/90 does). Throws std::invalid_argument for temperature <= 0 or
// n_rows * vocab >= 2^31, CudaError for a failed allocation or launch.
void probs_from_logits_cuda(float* probs, const float* logits, int n_rows, int vocab,
                            float temperature, int top_k, float top_p, cudaStream_t stream);

// sample_cdf_cpu on one row: *out (device) = the first index whose cumulative weight exceeds
// u * sum(weights); zero weights are never drawn. Sums in double like the CPU, so draws agree
// with it except where u * sum lies within rounding of a cumulative boundary.
void sample_cdf_cuda(int32_t* out, const float* weights, int vocab, double u, cudaStream_t stream);

}  // namespace dsi::kernels
