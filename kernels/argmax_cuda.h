// CUDA twin of argmax_cpu (kernels/argmax.h): device pointers, never syncs, and bit-exact with
// it: for every row it writes the very index argmax_cpu writes, including ties (the lowest
// index of the maximum), rows of -inf (0) and NaNs (a NaN at index 0 gives 0, elsewhere it is
// skipped). Greedy decoding on the GPU (CudaEngine::forward_argmax) therefore picks the same
// token as on the CPU for the same logits. tests/gpu/kernel_parity_test.cc checks it.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace dsi::kernels {
void argmax_cuda(int32_t* out, const float* x, int n, int vocab, cudaStream_t stream);
}  // namespace dsi::kernels
