// The opt-in 8-bit-activation products of kernels/qmatmul.h (Activations::kQ8): rounding the
// activations, each type's blocks as integer codes, group scales and offsets, and the
// arithmetic in scalar code, which the instruction-set variants reproduce bit for bit.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels/cpu/qmatmul_impl.h"
#include "kernels/half.h"

namespace dsi::kernels::detail {
namespace {

uint32_t le32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, sizeof v);
  return v;  // GGUF is little-endian; so are the hosts this builds for (kernels/dequant.cc)
}

}  // namespace

void quantize_q8(const float* x, int n, int64_t cols, int block, int8_t* q, float* d,
                 int16_t* sum16) {
  for (int64_t b = 0; b < n * (cols / block); ++b) {
    const float* xb = x + b * block;
    int8_t* qb = q + b * block;
    float amax = 0.0f;
    for (int i = 0; i < block; ++i) amax = std::max(amax, std::fabs(xb[i]));
    const float scale = amax > 0.0f ? 127.0f / amax : 0.0f;
    d[b] = amax / 127.0f;
    // Nearest, ties to even: adding and taking away 1.5 * 2^23 leaves |v| <= 127.x rounded to
    // an integer (without a call to nearbyint, which costs as much as the rest here).
    constexpr float kRound = 12582912.0f;
    for (int i = 0; i < block; ++i) {
      const float v = std::clamp(xb[i] * scale, -127.0f, 127.0f);
      qb[i] = static_cast<int8_t>((v + kRound) - kRound);
    }
  }
  for (int64_t k = 0; k < n * cols / 16; ++k) {
    int32_t s = 0;
    for (int i = 0; i < 16; ++i) s += q[16 * k + i];
    sum16[k] = static_cast<int16_t>(s);
  }
}

Q8Layout q8_layout(GgmlType type) {
  switch (type) {
    case GgmlType::Q8_0:
      return {32, 32, false, sizeof(BlockQ8_0)};
    case GgmlType::Q4_0:
      return {32, 32, false, sizeof(BlockQ4_0)};
    case GgmlType::Q5_0:
      return {32, 32, false, sizeof(BlockQ5_0)};
    case GgmlType::Q4_1:
      return {32, 32, true, sizeof(BlockQ4_1)};
    case GgmlType::Q5_1:
      return {32, 32, true, sizeof(BlockQ5_1)};
    case GgmlType::Q4_K:
      return {256, 32, true, sizeof(BlockQ4_K)};
    case GgmlType::Q5_K:
      return {256, 32, true, sizeof(BlockQ5_K)};
    case GgmlType::Q6_K:
      return {256, 16, true, sizeof(BlockQ6_K)};
    default:
      return {};
  }
}

void q8_codes(GgmlType type, const uint8_t* p, int16_t* c) {
  switch (type) {
    case GgmlType::Q8_0:
      for (int i = 0; i < 32; ++i) c[i] = static_cast<int8_t>(p[2 + i]);
      return;
    case GgmlType::Q4_0:
    case GgmlType::Q4_1: {
      const uint8_t* qs = p + (type == GgmlType::Q4_0 ? 2 : 4);
      const int off = type == GgmlType::Q4_0 ? 8 : 0;
      for (int i = 0; i < 16; ++i) {
        c[i] = static_cast<int16_t>((qs[i] & 0x0f) - off);
        c[i + 16] = static_cast<int16_t>((qs[i] >> 4) - off);
      }
      return;
    }
    case GgmlType::Q5_0:
    case GgmlType::Q5_1: {
      const bool zero = type == GgmlType::Q5_0;
      const uint32_t qh = le32(p + (zero ? 2 : 4));
      const uint8_t* qs = p + (zero ? 6 : 8);
      const int off = zero ? 16 : 0;
      for (int i = 0; i < 16; ++i) {
        c[i] = static_cast<int16_t>(((qs[i] & 0x0f) | (((qh >> i) & 1) << 4)) - off);
        c[i + 16] = static_cast<int16_t>(((qs[i] >> 4) | (((qh >> (i + 16)) & 1) << 4)) - off);
      }
      return;
    }
    case GgmlType::Q4_K:
    case GgmlType::Q5_K: {
      const bool five = type == GgmlType::Q5_K;
      const uint8_t* qh = p + 16;
      const uint8_t* qs = p + (five ? 48 : 16);
      for (int u = 0; u < 4; ++u) {
        for (int k = 0; k < 32; ++k) {
          const int lo = qs[32 * u + k] & 0x0f, hi = qs[32 * u + k] >> 4;
          const int b0 = five ? (qh[k] >> (2 * u)) & 1 : 0;
          const int b1 = five ? (qh[k] >> (2 * u + 1)) & 1 : 0;
          c[64 * u + k] = static_cast<int16_t>(lo | (b0 << 4));
          c[64 * u + 32 + k] = static_cast<int16_t>(hi | (b1 << 4));
        }
      }
      return;
    }
    case GgmlType::Q6_K:
      for (int h = 0; h < 2; ++h) {
        for (int k = 0; k < 4; ++k) {
          for (int l = 0; l < 32; ++l) {
            const uint8_t ql = p[64 * h + 32 * (k % 2) + l];
            const int lo = k < 2 ? ql & 0x0f : ql >> 4;
            const int hi = (p[128 + 32 * h + l] >> (2 * k)) & 3;
            c[128 * h + 32 * k + l] = static_cast<int16_t>(lo | (hi << 4));
          }
        }
      }
      return;
    default:
      return;
  }
}

float q8_dot(const WeightMatrix& w, int64_t r, const Q8Acts& x, int t) {
  const Q8Layout L = q8_layout(w.type);
  const int64_t blocks = w.cols / L.block;
  const int8_t* xq = x.q + t * x.cols;
  const float* xd = x.d + t * (x.cols / L.block);
  const int16_t* s16 = x.sum16 + t * (x.cols / 16);
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  float sm = 0.0f;
  int16_t c[256];
  for (int64_t k = 0; k < blocks; ++k) {
    const uint8_t* p = w.row(r) + k * L.bytes;
    Q8Scales sc{};
    q8_scales(w.type, p, &sc);
    q8_codes(w.type, p, c);
    const int8_t* xb = xq + k * L.block;
    int32_t iv[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int j = 0; j < L.block / 32; ++j) {
      for (int l = 0; l < 8; ++l) {
        const int e = 32 * j + 4 * l;
        int32_t prod = 0;
        for (int i = 0; i < 4; ++i) prod += c[e + i] * xb[e + i];
        iv[l] += sc.s[e / L.group] * prod;
      }
    }
    const float a = sc.d * xd[k];
    for (int l = 0; l < 8; ++l) acc[l] = std::fma(a, static_cast<float>(iv[l]), acc[l]);
    if (L.offsets) {
      const int16_t* sb = s16 + k * (L.block / 16);
      int32_t m = 0;
      for (int g = 0; g < L.block / L.group; ++g) {
        const int32_t xsum = L.group == 16 ? sb[g] : sb[2 * g] + sb[2 * g + 1];
        m += sc.m[g] * xsum;
      }
      sm = std::fma(sc.e * xd[k], static_cast<float>(m), sm);
    }
  }
  return hsum8(acc) + sm;
}

void generic_q8_rows(const WeightMatrix& w, int64_t r0, int nr, const Q8Acts& x, int n, float* y,
                     size_t ys, const float* bias) {
  for (int t = 0; t < n; ++t) {
    for (int r = 0; r < nr; ++r) {
      // + 0 without a bias, as the variants (it changes nothing: no sum here is -0).
      y[t * ys + r] = q8_dot(w, r0 + r, x, t) + (bias != nullptr ? bias[r] : 0.0f);
    }
  }
}

}  // namespace dsi::kernels::detail
