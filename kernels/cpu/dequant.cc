// CPU dequantisation of GGUF rows and the block-size table of kernels/ggml_type.h.
#include "kernels/dequant.h"

#include <cstring>
#include <iterator>
#include <stdexcept>
#include <string>

#include "kernels/half.h"

namespace dsi {

namespace {

struct TypeInfo {
  GgmlType type;
  const char* name;
  int64_t block;
  size_t size;
};

constexpr TypeInfo kTypes[] = {
    {GgmlType::F32, "f32", 1, 4},
    {GgmlType::F16, "f16", 1, 2},
    {GgmlType::BF16, "bf16", 1, 2},
    {GgmlType::Q8_0, "q8_0", kQuantBlock, sizeof(BlockQ8_0)},
    {GgmlType::Q4_0, "q4_0", kQuantBlock, sizeof(BlockQ4_0)},
    {GgmlType::Q4_1, "q4_1", kQuantBlock, sizeof(BlockQ4_1)},
    {GgmlType::Q5_0, "q5_0", kQuantBlock, sizeof(BlockQ5_0)},
    {GgmlType::Q5_1, "q5_1", kQuantBlock, sizeof(BlockQ5_1)},
    {GgmlType::Q2_K, "q2_K", kSuperBlock, sizeof(BlockQ2_K)},
    {GgmlType::Q3_K, "q3_K", kSuperBlock, sizeof(BlockQ3_K)},
    {GgmlType::Q4_K, "q4_K", kSuperBlock, sizeof(BlockQ4_K)},
    {GgmlType::Q5_K, "q5_K", kSuperBlock, sizeof(BlockQ5_K)},
    {GgmlType::Q6_K, "q6_K", kSuperBlock, sizeof(BlockQ6_K)},
};

const TypeInfo* info(GgmlType t) {
  for (const TypeInfo& i : kTypes) {
    if (i.type == t) return &i;
  }
  return nullptr;
}

// ggml's names of the ids this project does not compute with (empty: no type has that id).
constexpr const char* kOtherNames[] = {
    "",      "",           "",           "",           "q4_2",     "q4_3",     "",
    "",      "",           "q8_1",       "",           "",         "",         "",
    "",      "q8_K",       "iq2_xxs",    "iq2_xs",     "iq3_xxs",  "iq1_s",    "iq4_nl",
    "iq3_s", "iq2_s",      "iq4_xs",     "i8",         "i16",      "i32",      "i64",
    "f64",   "iq1_m",      "",           "q4_0_4_4",   "q4_0_4_8", "q4_0_8_8", "tq1_0",
    "tq2_0", "iq4_nl_4_4", "iq4_nl_4_8", "iq4_nl_8_8", "mxfp4",
};

}  // namespace

const char* ggml_type_name(GgmlType t) {
  const TypeInfo* i = info(t);
  return i ? i->name : "unsupported";
}

std::string ggml_type_describe(GgmlType t) {
  if (const TypeInfo* i = info(t)) return i->name;
  const auto id = static_cast<uint32_t>(t);
  if (id < std::size(kOtherNames) && kOtherNames[id][0] != '\0') {
    return std::string(kOtherNames[id]) + " (id " + std::to_string(id) + ")";
  }
  return "unknown type id " + std::to_string(id);
}

const char* ggml_supported_types() {
  return "f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q2_K, q3_K, q4_K, q5_K, q6_K";
}

bool ggml_type_supported(GgmlType t) {
  return info(t) != nullptr;
}

int64_t ggml_block_size(GgmlType t) {
  const TypeInfo* i = info(t);
  return i ? i->block : 0;
}

size_t ggml_type_size(GgmlType t) {
  const TypeInfo* i = info(t);
  return i ? i->size : 0;
}

size_t ggml_row_size(GgmlType t, int64_t n) {
  const int64_t bs = ggml_block_size(t);
  if (bs == 0) {
    throw std::invalid_argument("ggml type " + ggml_type_describe(t) + " is not supported");
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

// The block at p, copied so that any alignment of the source works.
template <typename Block>
Block block_at(const uint8_t* p) {
  Block b;
  std::memcpy(&b, p, sizeof b);
  return b;
}

// Each function below writes one block's elements to y. Products and differences are
// separate float operations in the order the layouts of kernels/ggml_type.h state (this file
// is built without FMA contraction), which is what makes them bit-exact references.

void q8_0(const BlockQ8_0& b, float* y) {
  const float d = fp16_to_fp32(b.d);
  for (int i = 0; i < 32; ++i) y[i] = d * b.qs[i];
}

// Code of element e < 32 in a Q4_0/Q4_1/Q5_0/Q5_1 nibble array.
int nibble32(const uint8_t* qs, int e) {
  return e < 16 ? (qs[e] & 0x0f) : (qs[e - 16] >> 4);
}

void q4_0(const BlockQ4_0& b, float* y) {
  const float d = fp16_to_fp32(b.d);
  for (int e = 0; e < 32; ++e) y[e] = static_cast<float>(nibble32(b.qs, e) - 8) * d;
}

void q4_1(const BlockQ4_1& b, float* y) {
  const float d = fp16_to_fp32(b.d);
  const float m = fp16_to_fp32(b.m);
  for (int e = 0; e < 32; ++e) {
    const float dq = static_cast<float>(nibble32(b.qs, e)) * d;
    y[e] = dq + m;
  }
}

uint32_t le32(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8) |
         (static_cast<uint32_t>(p[2]) << 16) | (static_cast<uint32_t>(p[3]) << 24);
}

int code5(const uint8_t* qs, uint32_t qh, int e) {
  return nibble32(qs, e) | static_cast<int>(((qh >> e) & 1u) << 4);
}

void q5_0(const BlockQ5_0& b, float* y) {
  const float d = fp16_to_fp32(b.d);
  const uint32_t qh = le32(b.qh);
  for (int e = 0; e < 32; ++e) y[e] = static_cast<float>(code5(b.qs, qh, e) - 16) * d;
}

void q5_1(const BlockQ5_1& b, float* y) {
  const float d = fp16_to_fp32(b.d);
  const float m = fp16_to_fp32(b.m);
  const uint32_t qh = le32(b.qh);
  for (int e = 0; e < 32; ++e) {
    const float dq = static_cast<float>(code5(b.qs, qh, e)) * d;
    y[e] = dq + m;
  }
}

// Low 2 bits of element e in the Q2_K/Q3_K code array.
int code2(const uint8_t* qs, int e) {
  const int h = e / 128, j = (e % 128) / 32, l = e % 32;
  return (qs[32 * h + l] >> (2 * j)) & 3;
}

void q2_k(const BlockQ2_K& b, float* y) {
  const float d = fp16_to_fp32(b.d);
  const float dmin = fp16_to_fp32(b.dmin);
  for (int s = 0; s < 16; ++s) {
    const float dl = d * static_cast<float>(b.scales[s] & 0x0f);
    const float ml = dmin * static_cast<float>(b.scales[s] >> 4);
    for (int e = 16 * s; e < 16 * s + 16; ++e) {
      const float dq = dl * static_cast<float>(code2(b.qs, e));
      y[e] = dq - ml;
    }
  }
}

void q3_k(const BlockQ3_K& b, float* y) {
  const float d = fp16_to_fp32(b.d);
  for (int s = 0; s < 16; ++s) {
    const int lo = s < 8 ? (b.scales[s] & 0x0f) : (b.scales[s - 8] >> 4);
    const int hi = (b.scales[8 + s % 4] >> (2 * (s / 4))) & 3;
    const float dl = d * static_cast<float>((lo | (hi << 4)) - 32);
    for (int e = 16 * s; e < 16 * s + 16; ++e) {
      const bool hbit = (b.hmask[e % 32] >> (e / 32)) & 1;
      y[e] = dl * static_cast<float>(code2(b.qs, e) - (hbit ? 0 : 4));
    }
  }
}

// Scale and min of sub-block s < 8 of a Q4_K/Q5_K super-block.
void scale_min_k4(const uint8_t* sc, int s, int* scale, int* min) {
  if (s < 4) {
    *scale = sc[s] & 63;
    *min = sc[s + 4] & 63;
  } else {
    *scale = (sc[s + 4] & 0x0f) | ((sc[s - 4] >> 6) << 4);
    *min = (sc[s + 4] >> 4) | ((sc[s] >> 6) << 4);
  }
}

// Low 4 bits of element e in the Q4_K/Q5_K code array.
int code4k(const uint8_t* qs, int e) {
  const int c = e / 64, j = (e % 64) / 32, l = e % 32;
  return (qs[32 * c + l] >> (4 * j)) & 0x0f;
}

template <typename Block, bool kFifthBit>
void q45_k(const Block& b, float* y) {
  const float d = fp16_to_fp32(b.d);
  const float dmin = fp16_to_fp32(b.dmin);
  for (int s = 0; s < 8; ++s) {
    int scale = 0, min = 0;
    scale_min_k4(b.scales, s, &scale, &min);
    const float dl = d * static_cast<float>(scale);
    const float ml = dmin * static_cast<float>(min);
    for (int e = 32 * s; e < 32 * s + 32; ++e) {
      int q = code4k(b.qs, e);
      if constexpr (kFifthBit) q |= ((b.qh[e % 32] >> (e / 32)) & 1) << 4;
      const float dq = dl * static_cast<float>(q);
      y[e] = dq - ml;
    }
  }
}

void q6_k(const BlockQ6_K& b, float* y) {
  const float d = fp16_to_fp32(b.d);
  for (int s = 0; s < 16; ++s) {
    const float dl = d * static_cast<float>(b.scales[s]);
    for (int e = 16 * s; e < 16 * s + 16; ++e) {
      const int h = e / 128, r = e % 128;
      const int lo = (b.ql[64 * h + r % 64] >> (4 * (r / 64))) & 0x0f;
      const int hi = (b.qh[32 * h + r % 32] >> (2 * (r / 32))) & 3;
      y[e] = dl * static_cast<float>((lo | (hi << 4)) - 32);
    }
  }
}

template <typename Block, void (*kFn)(const Block&, float*)>
void blocks(const uint8_t* p, float* dst, int64_t n, int64_t block) {
  for (int64_t i = 0; i < n / block; ++i) {
    kFn(block_at<Block>(p + i * sizeof(Block)), dst + i * block);
  }
}

// The factored forms (kernels/dequant.h): per block, codes to q and per group scale and offset
// to a and b. Each a * q is exact (scales have at most 19 significant bits, codes at most 7).

void f_q8_0(const BlockQ8_0& b, float* q, float* a, float* o) {
  a[0] = fp16_to_fp32(b.d);
  o[0] = 0.0f;
  for (int i = 0; i < 32; ++i) q[i] = b.qs[i];
}

void f_q4_0(const BlockQ4_0& b, float* q, float* a, float* o) {
  a[0] = fp16_to_fp32(b.d);
  o[0] = -8.0f * a[0];
  for (int e = 0; e < 32; ++e) q[e] = static_cast<float>(nibble32(b.qs, e));
}

void f_q4_1(const BlockQ4_1& b, float* q, float* a, float* o) {
  a[0] = fp16_to_fp32(b.d);
  o[0] = fp16_to_fp32(b.m);
  for (int e = 0; e < 32; ++e) q[e] = static_cast<float>(nibble32(b.qs, e));
}

void f_q5_0(const BlockQ5_0& b, float* q, float* a, float* o) {
  a[0] = fp16_to_fp32(b.d);
  o[0] = -16.0f * a[0];
  const uint32_t qh = le32(b.qh);
  for (int e = 0; e < 32; ++e) q[e] = static_cast<float>(code5(b.qs, qh, e));
}

void f_q5_1(const BlockQ5_1& b, float* q, float* a, float* o) {
  a[0] = fp16_to_fp32(b.d);
  o[0] = fp16_to_fp32(b.m);
  const uint32_t qh = le32(b.qh);
  for (int e = 0; e < 32; ++e) q[e] = static_cast<float>(code5(b.qs, qh, e));
}

void f_q2_k(const BlockQ2_K& b, float* q, float* a, float* o) {
  const float d = fp16_to_fp32(b.d);
  const float dmin = fp16_to_fp32(b.dmin);
  for (int s = 0; s < 16; ++s) {
    a[s] = d * static_cast<float>(b.scales[s] & 0x0f);
    o[s] = -(dmin * static_cast<float>(b.scales[s] >> 4));
  }
  for (int e = 0; e < 256; ++e) q[e] = static_cast<float>(code2(b.qs, e));
}

void f_q3_k(const BlockQ3_K& b, float* q, float* a, float* o) {
  const float d = fp16_to_fp32(b.d);
  for (int s = 0; s < 16; ++s) {
    const int lo = s < 8 ? (b.scales[s] & 0x0f) : (b.scales[s - 8] >> 4);
    const int hi = (b.scales[8 + s % 4] >> (2 * (s / 4))) & 3;
    a[s] = d * static_cast<float>((lo | (hi << 4)) - 32);
    o[s] = 0.0f;
  }
  for (int e = 0; e < 256; ++e) {
    const bool hbit = (b.hmask[e % 32] >> (e / 32)) & 1;
    q[e] = static_cast<float>(code2(b.qs, e) - (hbit ? 0 : 4));
  }
}

template <typename Block, bool kFifthBit>
void f_q45_k(const Block& b, float* q, float* a, float* o) {
  const float d = fp16_to_fp32(b.d);
  const float dmin = fp16_to_fp32(b.dmin);
  for (int s = 0; s < 8; ++s) {
    int scale = 0, min = 0;
    scale_min_k4(b.scales, s, &scale, &min);
    a[s] = d * static_cast<float>(scale);
    o[s] = -(dmin * static_cast<float>(min));
  }
  for (int e = 0; e < 256; ++e) {
    int c = code4k(b.qs, e);
    if constexpr (kFifthBit) c |= ((b.qh[e % 32] >> (e / 32)) & 1) << 4;
    q[e] = static_cast<float>(c);
  }
}

void f_q6_k(const BlockQ6_K& b, float* q, float* a, float* o) {
  const float d = fp16_to_fp32(b.d);
  for (int s = 0; s < 16; ++s) {
    a[s] = d * static_cast<float>(b.scales[s]);
    o[s] = 0.0f;
  }
  for (int e = 0; e < 256; ++e) {
    const int h = e / 128, r = e % 128;
    const int lo = (b.ql[64 * h + r % 64] >> (4 * (r / 64))) & 0x0f;
    const int hi = (b.qh[32 * h + r % 32] >> (2 * (r / 32))) & 3;
    q[e] = static_cast<float>((lo | (hi << 4)) - 32);
  }
}

template <typename Block, void (*kFn)(const Block&, float*, float*, float*)>
void factor_blocks(const uint8_t* p, int64_t n, int64_t block, int64_t group, float* q, float* a,
                   float* o) {
  const int64_t groups = block / group;
  for (int64_t i = 0; i < n / block; ++i) {
    kFn(block_at<Block>(p + i * sizeof(Block)), q + i * block, a + i * groups, o + i * groups);
  }
}

}  // namespace

void dequantize_row(GgmlType type, const void* src, float* dst, int64_t n) {
  const size_t bytes = ggml_row_size(type, n);  // validates type and n
  const auto* p = static_cast<const uint8_t*>(src);
  switch (type) {
    case GgmlType::F32:
      if (bytes > 0) std::memcpy(dst, p, bytes);  // an empty tensor's pointers may be null
      return;
    case GgmlType::F16:
      for (int64_t i = 0; i < n; ++i) dst[i] = fp16_to_fp32(load_u16(p + 2 * i));
      return;
    case GgmlType::BF16:
      for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_fp32(load_u16(p + 2 * i));
      return;
    case GgmlType::Q8_0:
      return blocks<BlockQ8_0, q8_0>(p, dst, n, kQuantBlock);
    case GgmlType::Q4_0:
      return blocks<BlockQ4_0, q4_0>(p, dst, n, kQuantBlock);
    case GgmlType::Q4_1:
      return blocks<BlockQ4_1, q4_1>(p, dst, n, kQuantBlock);
    case GgmlType::Q5_0:
      return blocks<BlockQ5_0, q5_0>(p, dst, n, kQuantBlock);
    case GgmlType::Q5_1:
      return blocks<BlockQ5_1, q5_1>(p, dst, n, kQuantBlock);
    case GgmlType::Q2_K:
      return blocks<BlockQ2_K, q2_k>(p, dst, n, kSuperBlock);
    case GgmlType::Q3_K:
      return blocks<BlockQ3_K, q3_k>(p, dst, n, kSuperBlock);
    case GgmlType::Q4_K:
      return blocks<BlockQ4_K, q45_k<BlockQ4_K, false>>(p, dst, n, kSuperBlock);
    case GgmlType::Q5_K:
      return blocks<BlockQ5_K, q45_k<BlockQ5_K, true>>(p, dst, n, kSuperBlock);
    case GgmlType::Q6_K:
      return blocks<BlockQ6_K, q6_k>(p, dst, n, kSuperBlock);
  }
}

QuantGroups quant_groups(GgmlType type) {
  switch (type) {
    case GgmlType::Q8_0:
      return {32, false};
    case GgmlType::Q4_0:
    case GgmlType::Q4_1:
    case GgmlType::Q5_0:
    case GgmlType::Q5_1:
    case GgmlType::Q4_K:
    case GgmlType::Q5_K:
      return {32, true};
    case GgmlType::Q2_K:
      return {16, true};
    case GgmlType::Q3_K:
    case GgmlType::Q6_K:
      return {16, false};
    default:
      return {};
  }
}

void factor_row(GgmlType type, const void* src, int64_t n, float* q, float* a, float* b) {
  ggml_row_size(type, n);  // validates type and n
  const auto* p = static_cast<const uint8_t*>(src);
  const int64_t g = quant_groups(type).group;
  switch (type) {
    case GgmlType::Q8_0:
      return factor_blocks<BlockQ8_0, f_q8_0>(p, n, kQuantBlock, g, q, a, b);
    case GgmlType::Q4_0:
      return factor_blocks<BlockQ4_0, f_q4_0>(p, n, kQuantBlock, g, q, a, b);
    case GgmlType::Q4_1:
      return factor_blocks<BlockQ4_1, f_q4_1>(p, n, kQuantBlock, g, q, a, b);
    case GgmlType::Q5_0:
      return factor_blocks<BlockQ5_0, f_q5_0>(p, n, kQuantBlock, g, q, a, b);
    case GgmlType::Q5_1:
      return factor_blocks<BlockQ5_1, f_q5_1>(p, n, kQuantBlock, g, q, a, b);
    case GgmlType::Q2_K:
      return factor_blocks<BlockQ2_K, f_q2_k>(p, n, kSuperBlock, g, q, a, b);
    case GgmlType::Q3_K:
      return factor_blocks<BlockQ3_K, f_q3_k>(p, n, kSuperBlock, g, q, a, b);
    case GgmlType::Q4_K:
      return factor_blocks<BlockQ4_K, f_q45_k<BlockQ4_K, false>>(p, n, kSuperBlock, g, q, a, b);
    case GgmlType::Q5_K:
      return factor_blocks<BlockQ5_K, f_q45_k<BlockQ5_K, true>>(p, n, kSuperBlock, g, q, a, b);
    case GgmlType::Q6_K:
      return factor_blocks<BlockQ6_K, f_q6_k>(p, n, kSuperBlock, g, q, a, b);
    default:
      throw std::invalid_argument(std::string("factor_row: ") + ggml_type_name(type) +
                                  " is not a quantized type");
  }
}

}  // namespace dsi
