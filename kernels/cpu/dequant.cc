// CPU dequantisation of GGUF rows and the block-size table of kernels/ggml_type.h.
#include "kernels/dequant.h"

#include <cstring>
#include <stdexcept>
#include <string>

#include "kernels/half.h"

namespace dsi {

const char* ggml_type_name(GgmlType t) {
  switch (t) {
    case GgmlType::F32:
      return "f32";
    case GgmlType::F16:
      return "f16";
    case GgmlType::Q4_0:
      return "q4_0";
    case GgmlType::Q4_1:
      return "q4_1";
    case GgmlType::Q8_0:
      return "q8_0";
    case GgmlType::BF16:
      return "bf16";
  }
  return "unsupported";
}

bool ggml_type_supported(GgmlType t) {
  return ggml_block_size(t) != 0;
}

int64_t ggml_block_size(GgmlType t) {
  switch (t) {
    case GgmlType::F32:
    case GgmlType::F16:
    case GgmlType::BF16:
      return 1;
    case GgmlType::Q4_0:
    case GgmlType::Q4_1:
    case GgmlType::Q8_0:
      return kQuantBlock;
  }
  return 0;
}

size_t ggml_type_size(GgmlType t) {
  switch (t) {
    case GgmlType::F32:
      return 4;
    case GgmlType::F16:
    case GgmlType::BF16:
      return 2;
    case GgmlType::Q4_0:
      return sizeof(BlockQ4_0);
    case GgmlType::Q4_1:
      return sizeof(BlockQ4_1);
    case GgmlType::Q8_0:
      return sizeof(BlockQ8_0);
  }
  return 0;
}

size_t ggml_row_size(GgmlType t, int64_t n) {
  const int64_t bs = ggml_block_size(t);
  if (bs == 0) {
    throw std::invalid_argument("ggml type id " + std::to_string(static_cast<uint32_t>(t)) +
                                " is not supported");
  }
  if (n < 0 || n % bs != 0) {
    throw std::invalid_argument(std::string("row of ") + std::to_string(n) + " elements of type " +
                                ggml_type_name(t) + " is not a whole number of " +
                                std::to_string(bs) + "-element blocks");
  }
  return static_cast<size_t>(n / bs) * ggml_type_size(t);
}

namespace {

uint16_t load_u16(const uint8_t* p) {
  return static_cast<uint16_t>(p[0] | (p[1] << 8));
}

}  // namespace

void dequantize_row(GgmlType type, const void* src, float* dst, int64_t n) {
  const size_t bytes = ggml_row_size(type, n);  // validates type and n
  const auto* p = static_cast<const uint8_t*>(src);
  switch (type) {
    case GgmlType::F32:
      std::memcpy(dst, p, bytes);
      return;
    case GgmlType::F16:
      for (int64_t i = 0; i < n; ++i) dst[i] = fp16_to_fp32(load_u16(p + 2 * i));
      return;
    case GgmlType::BF16:
      for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_fp32(load_u16(p + 2 * i));
      return;
    case GgmlType::Q8_0:
      for (int64_t b = 0; b < n / kQuantBlock; ++b, p += sizeof(BlockQ8_0), dst += kQuantBlock) {
        const float d = fp16_to_fp32(load_u16(p));
        const auto* qs = reinterpret_cast<const int8_t*>(p + 2);
        for (int i = 0; i < 32; ++i) dst[i] = d * qs[i];
      }
      return;
    case GgmlType::Q4_0:
      for (int64_t b = 0; b < n / kQuantBlock; ++b, p += sizeof(BlockQ4_0), dst += kQuantBlock) {
        const float d = fp16_to_fp32(load_u16(p));
        const uint8_t* qs = p + 2;
        for (int i = 0; i < 16; ++i) {
          dst[i] = (static_cast<int>(qs[i] & 0x0f) - 8) * d;
          dst[i + 16] = (static_cast<int>(qs[i] >> 4) - 8) * d;
        }
      }
      return;
    case GgmlType::Q4_1:
      for (int64_t b = 0; b < n / kQuantBlock; ++b, p += sizeof(BlockQ4_1), dst += kQuantBlock) {
        const float d = fp16_to_fp32(load_u16(p));
        const float m = fp16_to_fp32(load_u16(p + 2));
        const uint8_t* qs = p + 4;
        for (int i = 0; i < 16; ++i) {
          dst[i] = (qs[i] & 0x0f) * d + m;
          dst[i + 16] = (qs[i] >> 4) * d + m;
        }
      }
      return;
  }
}

}  // namespace dsi
