// Random matrices in every GGUF type, with finite, realistic scales, and random inputs: shared by
// the kernel tests and the kernel benchmark.
#pragma once

#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/ggml_type.h"
#include "kernels/half.h"

namespace dsi::kernels::quant_test {

// Byte offsets of the half-precision scales in one block of each quantized type.
inline std::vector<size_t> scale_offsets(GgmlType t) {
  switch (t) {
    case GgmlType::Q8_0:
    case GgmlType::Q4_0:
    case GgmlType::Q5_0:
      return {0};
    case GgmlType::Q4_1:
    case GgmlType::Q5_1:
    case GgmlType::Q4_K:
    case GgmlType::Q5_K:
      return {0, 2};
    case GgmlType::Q2_K:
      return {80, 82};
    case GgmlType::Q3_K:
      return {108};
    case GgmlType::Q6_K:
      return {208};
    default:
      return {};
  }
}

inline uint16_t random_half(std::mt19937& rng, float lo, float hi) {
  std::uniform_real_distribution<float> d(lo, hi);
  std::bernoulli_distribution neg(0.5);
  const float v = d(rng);
  return fp32_to_fp16(neg(rng) ? -v : v);
}

// A (rows, cols) matrix of `type` with random codes and finite, realistic scales.
inline std::vector<uint8_t> random_matrix(GgmlType type, int64_t rows, int64_t cols,
                                          uint32_t seed) {
  std::mt19937 rng(seed);
  const size_t bytes = ggml_row_size(type, cols) * rows;
  std::vector<uint8_t> m(bytes);
  std::uniform_int_distribution<int> byte(0, 255);
  std::normal_distribution<float> normal(0.0f, 0.5f);
  if (type == GgmlType::F32) {
    for (size_t i = 0; i < bytes; i += 4) {
      const float v = normal(rng);
      std::memcpy(&m[i], &v, 4);
    }
    return m;
  }
  if (type == GgmlType::F16 || type == GgmlType::BF16) {
    for (size_t i = 0; i < bytes; i += 2) {
      const float v = normal(rng);
      const uint16_t h =
          type == GgmlType::F16 ? fp32_to_fp16(v) : static_cast<uint16_t>(f32_to_bits(v) >> 16);
      std::memcpy(&m[i], &h, 2);
    }
    return m;
  }
  for (auto& b : m) b = static_cast<uint8_t>(byte(rng));
  const size_t block = ggml_type_size(type);
  for (size_t at = 0; at < bytes; at += block) {
    for (size_t off : scale_offsets(type)) {
      const uint16_t h = random_half(rng, 1e-3f, 0.05f);
      std::memcpy(&m[at + off], &h, 2);
    }
  }
  return m;
}

inline std::vector<float> random_floats(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

}  // namespace dsi::kernels::quant_test
