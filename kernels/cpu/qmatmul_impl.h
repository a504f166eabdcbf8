// Internals of kernels/qmatmul.h shared by its instruction-set variants: each variant computes
// blocks of dot products with the arithmetic that kernels/qmatmul.h fixes; kernels/cpu/qmatmul.cc
// tiles, threads and dispatches, and computes the group sums of the input once per call.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "kernels/dequant.h"
#include "kernels/ggml_type.h"
#include "kernels/half.h"
#include "kernels/qmatmul.h"

namespace dsi::kernels::detail {

// A batch of activations rounded to 8 bits (kernels/qmatmul.h, Activations::kQ8) in blocks of
// `block` (the weight type's block size): for token t, q + t * cols (cols int8), d + t * cols /
// block (each block's dx) and sum16 + t * cols / 16 (the sum of each 16 consecutive q).
struct Q8Acts {
  const int8_t* q = nullptr;
  const float* d = nullptr;
  const int16_t* sum16 = nullptr;  // |sum| <= 16 * 127
  int64_t cols = 0;
  int block = 0;
};

// Rounds n tokens of x (cols each) into q, d and sum16 (sized as Q8Acts says).
void quantize_q8(const float* x, int n, int64_t cols, int block, int8_t* q, float* d,
                 int16_t* sum16);

// A weight type's blocks in the 8-bit arithmetic: block elements, group size and whether the
// blocks have offsets (e, m; the other types' codes are signed).
struct Q8Layout {
  int block = 0, group = 0;
  bool offsets = false;
  size_t bytes = 0;  // of one block in the file
};
Q8Layout q8_layout(GgmlType type);  // block == 0: not a q8_supported type

// One block's float d, e and integer group scales s and offsets m (up to 16 groups).
struct Q8Scales {
  float d, e;
  int s[16];
  int m[16];
};

inline float q8_half(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, sizeof h);
  return fp16_to_fp32(h);
}

// The 6-bit scale and min of sub-block g of a Q4_K/Q5_K block (kernels/ggml_type.h).
inline void scale_min_k4(const uint8_t* q, int g, int* sc, int* mn) {
  if (g < 4) {
    *sc = q[g] & 63;
    *mn = q[g + 4] & 63;
  } else {
    *sc = (q[g + 4] & 0x0f) | ((q[g - 4] >> 6) << 4);
    *mn = (q[g + 4] >> 4) | ((q[g] >> 6) << 4);
  }
}

// Only the fields the type uses are written (inline: the variants' switch folds away); `half`
// converts an fp16 at p exactly (the variants pass their instruction for it).
// Q4_0 and Q5_0 fold their constant offset into signed codes (c - 8, c - 16); Q4_1 and Q5_1
// have e = their min and m = 1; the K-quants e = -dmin (Q4_K, Q5_K) with m their mins, and
// Q6_K e = d with m = -32 s (codes 0..63 stand for c - 32).
template <class Half = float (*)(const uint8_t*)>
inline void q8_scales(GgmlType type, const uint8_t* p, Q8Scales* o, Half half = q8_half) {
  switch (type) {
    case GgmlType::Q8_0:
    case GgmlType::Q4_0:
    case GgmlType::Q5_0:
      o->d = half(p);
      o->s[0] = 1;
      return;
    case GgmlType::Q4_1:
    case GgmlType::Q5_1:
      o->d = half(p);
      o->e = half(p + 2);
      o->s[0] = 1;
      o->m[0] = 1;
      return;
    case GgmlType::Q4_K:
    case GgmlType::Q5_K:
      o->d = half(p);
      o->e = -half(p + 2);
      for (int g = 0; g < 8; ++g) scale_min_k4(p + 4, g, &o->s[g], &o->m[g]);
      return;
    case GgmlType::Q6_K: {
      o->d = half(p + 208);
      o->e = o->d;
      for (int g = 0; g < 16; ++g) {
        o->s[g] = static_cast<int8_t>(p[192 + g]);
        o->m[g] = -32 * o->s[g];
      }
      return;
    }
    default:
      return;
  }
}

// One block's codes, in element order (the scalar reference; the variants read them in place).
void q8_codes(GgmlType type, const uint8_t* p, int16_t* c);

// Up to this many tokens, the variants stream the rows once per token (decode, short verify
// blocks) instead of factoring them first.
inline constexpr int kMaxStreamTokens = 3;

struct QmatmulIsa {
  // For r < nr, t < n: y[t * ys + r] = the product of row r0 + r of w with x + t * w.cols, plus
  // bias[r] when bias is not nullptr. For affine types, xs holds each token's group sums
  // (group_sums, w.cols / group * 8 floats a token); nullptr otherwise.
  void (*rows)(const WeightMatrix& w, int64_t r0, int nr, const float* x, int n, const float* xs,
               float* y, size_t ys, const float* bias);
  // The same over activations rounded to 8 bits (q8_supported types only).
  void (*q8_rows)(const WeightMatrix& w, int64_t r0, int nr, const Q8Acts& x, int n, float* y,
                  size_t ys, const float* bias);
};

// xs[8 g + l] = the sum of x[group * g + 8 c + l] over c = 0 .. group/8 - 1, added in order.
void group_sums(const float* x, int64_t cols, int64_t group, float* xs);

// Float lanes shared by the variants' scalar tails: ((a0 + a4) + (a2 + a6)) + ((a1 + a5) + ...).
inline float hsum8(const float* a) {
  return ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]));
}

// The 8-bit arithmetic of kernels/qmatmul.h in scalar code: row r of w with token t of x.
float q8_dot(const WeightMatrix& w, int64_t r, const Q8Acts& x, int t);
void generic_q8_rows(const WeightMatrix& w, int64_t r0, int nr, const Q8Acts& x, int n, float* y,
                     size_t ys, const float* bias);

extern const QmatmulIsa kGenericIsa;
extern const QmatmulIsa kAvx2Isa;  // only when built for x86-64 (DSI_HAVE_AVX2_KERNELS)

}  // namespace dsi::kernels::detail
