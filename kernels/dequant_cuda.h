// CUDA twin of dequantize_row (kernels/dequant.h): converts n elements of a GGUF tensor
// (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K..Q6_K) already on the device to float32
// (bit-identical to the CPU reference) or to IEEE half (the input of the FP16 GEMM). src needs
// only the alignment of its element: 4 bytes for F32, 2 for the others (every GGUF block is an
// even number of bytes long, so rows are 2-byte aligned). Throws std::invalid_argument for an
// unsupported type or n not a multiple of the block.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/ggml_type.h"

namespace dsi::kernels {
void dequantize_cuda(GgmlType type, const void* src, float* dst, int64_t n, cudaStream_t stream);
// dst: n IEEE half values (uint16_t bits), rounded to nearest even.
void dequantize_f16_cuda(GgmlType type, const void* src, uint16_t* dst, int64_t n,
                         cudaStream_t stream);

// Embedding lookup from a (vocab, dim) table stored as any of the types above (GPU twin of
// embedding_cpu, kernels/embedding.h, which takes a float table): out (n, dim) float, row r
// is table row tokens[r] dequantized. tokens is a device array, each id in [0, vocab) (the
// caller checks); dim must be a multiple of the type's block.
void embedding_cuda(float* out, GgmlType type, const void* table, const int32_t* tokens, int n,
                    int dim, cudaStream_t stream);
}  // namespace dsi::kernels
