// The AVX2/FMA/F16C variant of kernels/qmatmul.h. Quantized rows are read block by block in
// their file layout: each group's codes are widened from bytes to eight float lanes in registers
// and multiplied with the input there, the group's scale and offset applied to the sums, in the
// order kernels/qmatmul.h fixes. A single token streams every row once (decode); a batch
// (verify, prefill) first factors a task's rows into a small buffer, then computes register
// tiles of rows x tokens, each (row, token) with its own accumulators so that its roundings do
// not depend on the tile. Built with -mavx2 -mfma -mf16c -ffp-contract=off; called only when
// the CPU has them.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/cpu/qmatmul_impl.h"
#include "kernels/dequant.h"
#include "kernels/half.h"

namespace dsi::kernels::detail {
namespace {

float half_at(const uint8_t* p) {  // F16C: exact, as fp16_to_fp32 (kernels/half.h)
  uint16_t h;
  std::memcpy(&h, p, sizeof h);
  return _cvtsh_ss(h);
}

__m128i load16(const uint8_t* p) {
  return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
}

__m256i load32(const uint8_t* p) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
}

uint32_t le32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, sizeof v);
  return v;  // x86 is little-endian, like GGUF
}

__m256 cvt(__m256i v) {
  return _mm256_cvtepi32_ps(v);
}

// Eight bytes at p widened to int32 lanes, unsigned or signed.
__m256i u8x8(const uint8_t* p) {
  return _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
}

__m256i i8x8(const uint8_t* p) {
  return _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
}

// 32 code bytes in a register as four chunks of float lanes, unsigned or signed.
template <bool kSigned>
void expand32(__m256i v, __m256* q) {
  const __m128i lo = _mm256_castsi256_si128(v);
  const __m128i hi = _mm256_extracti128_si256(v, 1);
  const __m128i parts[4] = {lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)};
#pragma GCC unroll 4
  for (int c = 0; c < 4; ++c) {
    q[c] = cvt(kSigned ? _mm256_cvtepi8_epi32(parts[c]) : _mm256_cvtepu8_epi32(parts[c]));
  }
}

// Byte e of the result is `value` where bit e of `bits` is set, else 0.
__m256i bits_to_bytes(uint32_t bits, char value) {
  const __m256i shuffle = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,  //
                                           2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
  const __m256i select = _mm256_set1_epi64x(static_cast<int64_t>(0x8040201008040201ull));
  const __m256i b = _mm256_shuffle_epi8(_mm256_set1_epi32(static_cast<int>(bits)), shuffle);
  const __m256i on = _mm256_cmpeq_epi8(_mm256_and_si256(b, select), select);
  return _mm256_and_si256(on, _mm256_set1_epi8(value));
}

__m256i low_nibbles(__m256i v) {
  return _mm256_and_si256(v, _mm256_set1_epi8(0x0f));
}

__m256i high_nibbles(__m256i v) {
  return _mm256_and_si256(_mm256_srli_epi16(v, 4), _mm256_set1_epi8(0x0f));
}

// The 32 codes of a Q4_0..Q5_1 nibble array (low nibbles elements 0..15, high 16..31) as bytes.
__m256i nibble_bytes(const uint8_t* qs) {
  const __m128i b = load16(qs);
  const __m128i m = _mm_set1_epi8(0x0f);
  return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(b, 4), m), _mm_and_si128(b, m));
}

// Four-bit codes straight from memory: chunks 0, 1 are the low nibbles of bytes 0..15 and chunks
// 4, 5 (or 2, 3: `hi`) their high nibbles.
void nibble_chunks(const uint8_t* qs, int bytes, __m256* lo, __m256* hi) {
  const __m256i m = _mm256_set1_epi32(0x0f);
#pragma GCC unroll 16
  for (int c = 0; c < bytes / 8; ++c) {
    const __m256i v = u8x8(qs + 8 * c);
    lo[c] = cvt(_mm256_and_si256(v, m));
    hi[c] = cvt(_mm256_srli_epi32(v, 4));
  }
}

// One quantized type's block layout: kElems elements in kBytes bytes, groups of kGroup sharing
// a scale (and an offset when kAffine). scales() gives a block's per-group a and b exactly as
// factor_row (kernels/dequant.h); codes(p, u, q) its groups u * kUnit .. u * kUnit + kUnit - 1
// as kUnit * kGroup / 8 chunks of float lanes, the codes factor_row gives.

struct TQ8_0 {
  static constexpr int kElems = 32, kGroup = 32, kUnit = 1;
  static constexpr size_t kBytes = sizeof(BlockQ8_0);
  static constexpr bool kAffine = false;
  static void scales(const uint8_t* p, float* a, float*) { a[0] = half_at(p); }
  static void codes(const uint8_t* p, int, __m256* q) {
#pragma GCC unroll 16
    for (int c = 0; c < 4; ++c) q[c] = cvt(i8x8(p + 2 + 8 * c));
  }
};

struct TQ4_0 {
  static constexpr int kElems = 32, kGroup = 32, kUnit = 1;
  static constexpr size_t kBytes = sizeof(BlockQ4_0);
  static constexpr bool kAffine = true;
  static void scales(const uint8_t* p, float* a, float* b) {
    a[0] = half_at(p);
    b[0] = -8.0f * a[0];
  }
  static void codes(const uint8_t* p, int, __m256* q) { nibble_chunks(p + 2, 16, q, q + 2); }
};

struct TQ4_1 {
  static constexpr int kElems = 32, kGroup = 32, kUnit = 1;
  static constexpr size_t kBytes = sizeof(BlockQ4_1);
  static constexpr bool kAffine = true;
  static void scales(const uint8_t* p, float* a, float* b) {
    a[0] = half_at(p);
    b[0] = half_at(p + 2);
  }
  static void codes(const uint8_t* p, int, __m256* q) { nibble_chunks(p + 4, 16, q, q + 2); }
};

struct TQ5_0 {
  static constexpr int kElems = 32, kGroup = 32, kUnit = 1;
  static constexpr size_t kBytes = sizeof(BlockQ5_0);
  static constexpr bool kAffine = true;
  static void scales(const uint8_t* p, float* a, float* b) {
    a[0] = half_at(p);
    b[0] = -16.0f * a[0];
  }
  static void codes(const uint8_t* p, int, __m256* q) {
    expand32<false>(_mm256_or_si256(nibble_bytes(p + 6), bits_to_bytes(le32(p + 2), 16)), q);
  }
};

struct TQ5_1 {
  static constexpr int kElems = 32, kGroup = 32, kUnit = 1;
  static constexpr size_t kBytes = sizeof(BlockQ5_1);
  static constexpr bool kAffine = true;
  static void scales(const uint8_t* p, float* a, float* b) {
    a[0] = half_at(p);
    b[0] = half_at(p + 2);
  }
  static void codes(const uint8_t* p, int, __m256* q) {
    expand32<false>(_mm256_or_si256(nibble_bytes(p + 8), bits_to_bytes(le32(p + 4), 16)), q);
  }
};

template <bool kFifthBit>
struct TQ45_K {
  static constexpr int kElems = 256, kGroup = 32, kUnit = 2;
  static constexpr size_t kBytes = kFifthBit ? sizeof(BlockQ5_K) : sizeof(BlockQ4_K);
  static constexpr bool kAffine = true;
  // The 6-bit scales and mins of kernels/ggml_type.h, unpacked a word at a time, then scaled
  // eight lanes at once (each product exact, as in factor_row).
  static void scales(const uint8_t* p, float* a, float* b) {
    const uint32_t u0 = le32(p + 4), u1 = le32(p + 8), u2 = le32(p + 12);
    const uint32_t sc_hi = (u2 & 0x0f0f0f0fu) | (((u0 >> 6) & 0x03030303u) << 4);
    const uint32_t mn_hi = ((u2 >> 4) & 0x0f0f0f0fu) | (((u1 >> 6) & 0x03030303u) << 4);
    const auto i32 = [](uint32_t v) { return static_cast<int>(v); };
    const __m128i scb = _mm_setr_epi32(i32(u0 & 0x3f3f3f3fu), i32(sc_hi), 0, 0);
    const __m128i mnb = _mm_setr_epi32(i32(u1 & 0x3f3f3f3fu), i32(mn_hi), 0, 0);
    const __m256 d = _mm256_set1_ps(half_at(p)), dmin = _mm256_set1_ps(half_at(p + 2));
    _mm256_storeu_ps(a, _mm256_mul_ps(d, cvt(_mm256_cvtepu8_epi32(scb))));
    const __m256 m = _mm256_mul_ps(dmin, cvt(_mm256_cvtepu8_epi32(mnb)));
    _mm256_storeu_ps(b, _mm256_xor_ps(m, _mm256_set1_ps(-0.0f)));  // -(dmin * min)
  }
  // Sub-blocks 2u (low nibbles of qs[32u ..]) and 2u + 1 (high nibbles); Q5_K's fifth bits are
  // bits 2u and 2u + 1 of qh[0..32).
  static void codes(const uint8_t* p, int u, __m256* q) {
    if constexpr (!kFifthBit) {
      nibble_chunks(p + 16 + 32 * u, 32, q, q + 4);
    } else {
      const __m256i v = load32(p + 48 + 32 * u);
      const __m256i h = load32(p + 16);
      const __m256i one = _mm256_set1_epi8(1);
      const __m256i b0 = _mm256_and_si256(_mm256_srli_epi16(h, 2 * u), one);
      const __m256i b1 = _mm256_and_si256(_mm256_srli_epi16(h, 2 * u + 1), one);
      expand32<false>(_mm256_or_si256(low_nibbles(v), _mm256_slli_epi16(b0, 4)), q);
      expand32<false>(_mm256_or_si256(high_nibbles(v), _mm256_slli_epi16(b1, 4)), q + 4);
    }
  }
};

// Q6_K: unit u covers elements 128 h + 32 k + l (h = u / 4, k = u % 4, l < 32), sub-blocks 2u
// and 2u + 1: low bits in nibble k / 2 of ql[64 h + 32 (k % 2) + l], high bits at bits 2k of
// qh[32 h + l].
struct TQ6_K {
  static constexpr int kElems = 256, kGroup = 16, kUnit = 2;
  static constexpr size_t kBytes = sizeof(BlockQ6_K);
  static constexpr bool kAffine = false;
  static void scales(const uint8_t* p, float* a, float*) {
    const __m256 d = _mm256_set1_ps(half_at(p + 208));
    _mm256_storeu_ps(a, _mm256_mul_ps(d, cvt(i8x8(p + 192))));
    _mm256_storeu_ps(a + 8, _mm256_mul_ps(d, cvt(i8x8(p + 200))));
  }
  static void codes(const uint8_t* p, int u, __m256* q) {
    const int h = u / 4, k = u % 4;
    const __m256i ql = load32(p + 64 * h + 32 * (k % 2));
    const __m256i lo = k < 2 ? low_nibbles(ql) : high_nibbles(ql);
    const __m256i qh = load32(p + 128 + 32 * h);
    const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(qh, 2 * k), _mm256_set1_epi8(3));
    const __m256i code = _mm256_or_si256(lo, _mm256_slli_epi16(hi, 4));
    expand32<true>(_mm256_sub_epi8(code, _mm256_set1_epi8(32)), q);
  }
};

float hsum(__m256 a) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));  // a_i + a_i+4
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));  // (a0+a4)+(a2+a6), (a1+a5)+(a3+a7)
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}

// Lanes [0, n) of p, zeros beyond (n < 8).
__m256 load_partial(const float* p, int64_t n) {
  const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)), idx);
  return _mm256_maskload_ps(p, mask);
}

// R rows x T tokens of dot products, one accumulator each.
template <int R, int T>
void tile(const float* w, size_t ws, const float* x, int64_t cols, float* y, size_t ys,
          const float* bias) {
  __m256 acc[R][T];
  for (int r = 0; r < R; ++r) {
    for (int t = 0; t < T; ++t) acc[r][t] = _mm256_setzero_ps();
  }
  int64_t i = 0;
  for (; i + 8 <= cols; i += 8) {
    __m256 wv[R];
    for (int r = 0; r < R; ++r) wv[r] = _mm256_loadu_ps(w + r * ws + i);
    for (int t = 0; t < T; ++t) {
      const __m256 xv = _mm256_loadu_ps(x + t * cols + i);
      for (int r = 0; r < R; ++r) acc[r][t] = _mm256_fmadd_ps(wv[r], xv, acc[r][t]);
    }
  }
  if (i < cols) {
    __m256 wv[R];
    for (int r = 0; r < R; ++r) wv[r] = load_partial(w + r * ws + i, cols - i);
    for (int t = 0; t < T; ++t) {
      const __m256 xv = load_partial(x + t * cols + i, cols - i);
      for (int r = 0; r < R; ++r) acc[r][t] = _mm256_fmadd_ps(wv[r], xv, acc[r][t]);
    }
  }
  for (int t = 0; t < T; ++t) {
    for (int r = 0; r < R; ++r) {
      const float d = hsum(acc[r][t]);
      y[t * ys + r] = bias != nullptr ? d + bias[r] : d;
    }
  }
}

template <int R, int T>
void row_tiles(const float* w, size_t ws, int nr, const float* x, int64_t cols, float* y, size_t ys,
               const float* bias) {
  int r = 0;
  for (; r + R <= nr; r += R) {
    tile<R, T>(w + r * ws, ws, x, cols, y + r, ys, bias ? bias + r : nullptr);
  }
  for (; r < nr; ++r) tile<1, T>(w + r * ws, ws, x, cols, y + r, ys, bias ? bias + r : nullptr);
}

void avx2_dots(const float* w, size_t ws, int nr, const float* x, int n, int64_t cols, float* y,
               size_t ys, const float* bias) {
  int t = 0;
  for (; t + 4 <= n; t += 4) {
    row_tiles<2, 4>(w, ws, nr, x + static_cast<size_t>(t) * cols, cols, y + t * ys, ys, bias);
  }
  for (; t < n; ++t) {
    row_tiles<4, 1>(w, ws, nr, x + static_cast<size_t>(t) * cols, cols, y + t * ys, ys, bias);
  }
}

// The single-token path asks the cache for the block one group of rows ahead of each row's read
// position (rows lie one after another), at least this many bytes ahead.
constexpr size_t kMinPrefetchAhead = 2048;

// ---- Float types (F32, F16, BF16): rows decoded to float, then the plain chain.

void f16_32(const uint8_t* p, float* y) {
  for (int c = 0; c < 4; ++c) _mm256_storeu_ps(y + 8 * c, _mm256_cvtph_ps(load16(p + 16 * c)));
}

void bf16_32(const uint8_t* p, float* y) {
  for (int c = 0; c < 4; ++c) {
    const __m256i u = _mm256_slli_epi32(_mm256_cvtepu16_epi32(load16(p + 16 * c)), 16);
    _mm256_storeu_ps(y + 8 * c, _mm256_castsi256_ps(u));
  }
}

void float_row(GgmlType type, const uint8_t* p, int64_t n, float* y) {
  int64_t i = 0;
  if (type == GgmlType::F16) {
    for (; i + 32 <= n; i += 32) f16_32(p + 2 * i, y + i);
  } else if (type == GgmlType::BF16) {
    for (; i + 32 <= n; i += 32) bf16_32(p + 2 * i, y + i);
  }
  const size_t elt = type == GgmlType::F32 ? 4 : 2;
  if (i < n) dequantize_row(type, p + elt * i, y + i, n - i);
}

void float_rows(const WeightMatrix& w, int64_t r0, int nr, const float* x, int n, float* y,
                size_t ys, const float* bias) {
  const int64_t cols = w.cols;
  if (w.type == GgmlType::F32 && w.row_bytes % sizeof(float) == 0 &&
      reinterpret_cast<uintptr_t>(w.data) % alignof(float) == 0) {
    avx2_dots(reinterpret_cast<const float*>(w.row(r0)), w.row_bytes / sizeof(float), nr, x, n,
              cols, y, ys, bias);
    return;
  }
  thread_local std::vector<float> decoded;
  decoded.resize(static_cast<size_t>(nr) * cols);
  for (int r = 0; r < nr; ++r) float_row(w.type, w.row(r0 + r), cols, decoded.data() + r * cols);
  avx2_dots(decoded.data(), static_cast<size_t>(cols), nr, x, n, cols, y, ys, bias);
}

// ---- Quantized types, one token: R rows stream through the core together, block by block;
// each group's codes go from memory to float lanes to the group sums without a store.

template <class T, int R>
void stream(const WeightMatrix& w, int64_t r0, const float* x, const float* xs, float* y,
            const float* bias) {
  constexpr int kGroups = T::kElems / T::kGroup, kChunks = T::kGroup / 8;
  __m256 acc[R];
  const uint8_t* rows[R];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
    acc[r] = _mm256_setzero_ps();
    rows[r] = w.row(r0 + r);
  }
  const int64_t blocks = w.cols / T::kElems;
  const size_t ahead = std::max(R * w.row_bytes, kMinPrefetchAhead);
  for (int64_t blk = 0; blk < blocks; ++blk) {
    float a[R][kGroups], b[R][kGroups];
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const uint8_t* p = rows[r] + blk * T::kBytes;
      for (size_t line = 0; line < T::kBytes; line += 64) {  // every line the block spans
        _mm_prefetch(reinterpret_cast<const char*>(p + ahead + line), _MM_HINT_T0);
      }
      T::scales(p, a[r], b[r]);
    }
    // The scales are then broadcast from memory (a load each), not shuffled out of the
    // registers that computed them (two shuffles each, on the ports the code widening needs).
    asm volatile("" : : "r"(a), "r"(b) : "memory");
    const float* xb = x + blk * T::kElems;
    const float* sb = T::kAffine ? xs + blk * kGroups * 8 : nullptr;
#pragma GCC unroll 16
    for (int u = 0; u < kGroups / T::kUnit; ++u) {
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r) {
        __m256 q[T::kUnit * kChunks];
        T::codes(rows[r] + blk * T::kBytes, u, q);
#pragma GCC unroll 16
        for (int k = 0; k < T::kUnit; ++k) {
          const int g = u * T::kUnit + k;
          const float* xg = xb + g * T::kGroup;
          __m256 s = _mm256_mul_ps(q[k * kChunks], _mm256_loadu_ps(xg));
#pragma GCC unroll 16
          for (int c = 1; c < kChunks; ++c) {
            s = _mm256_fmadd_ps(q[k * kChunks + c], _mm256_loadu_ps(xg + 8 * c), s);
          }
          acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(a[r][g]), s, acc[r]);
          if constexpr (T::kAffine) {
            acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(b[r][g]), _mm256_loadu_ps(sb + 8 * g), acc[r]);
          }
        }
      }
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
    const float d = hsum(acc[r]);
    y[r] = bias != nullptr ? d + bias[r] : d;
  }
}

template <class T>
void stream_rows(const WeightMatrix& w, int64_t r0, int nr, const float* x, const float* xs,
                 float* y, const float* bias) {
  int r = 0;
  for (; r + 4 <= nr; r += 4) stream<T, 4>(w, r0 + r, x, xs, y + r, bias ? bias + r : nullptr);
  for (; r < nr; ++r) stream<T, 1>(w, r0 + r, x, xs, y + r, bias ? bias + r : nullptr);
}

// ---- Quantized types, a batch: a task's rows factored once into q, a, b (kernels/dequant.h),
// then tiles of R rows x TT tokens.

template <class T>
void factor_rows(const WeightMatrix& w, int64_t r0, int nr, float* q, float* a, float* b) {
  constexpr int kGroups = T::kElems / T::kGroup, kChunks = T::kGroup / 8;
  const int64_t groups = w.cols / T::kGroup;
  for (int r = 0; r < nr; ++r) {
    const uint8_t* row = w.row(r0 + r);
    for (int64_t blk = 0; blk < w.cols / T::kElems; ++blk) {
      const uint8_t* p = row + blk * T::kBytes;
      float* ab = a + r * groups + blk * kGroups;
      float* bb = b + r * groups + blk * kGroups;
      T::scales(p, ab, bb);
      if constexpr (!T::kAffine) {
        for (int g = 0; g < kGroups; ++g) bb[g] = 0.0f;
      }
      float* qb = q + r * w.cols + blk * T::kElems;
      for (int u = 0; u < kGroups / T::kUnit; ++u) {
        __m256 v[T::kUnit * kChunks];
        T::codes(p, u, v);
        for (int c = 0; c < T::kUnit * kChunks; ++c) {
          _mm256_storeu_ps(qb + (u * T::kUnit * kChunks + c) * 8, v[c]);
        }
      }
    }
  }
}

void scalar_factor_rows(const WeightMatrix& w, int64_t r0, int nr, float* q, float* a, float* b) {
  const int64_t groups = w.cols / quant_groups(w.type).group;
  for (int r = 0; r < nr; ++r) {
    factor_row(w.type, w.row(r0 + r), w.cols, q + r * w.cols, a + r * groups, b + r * groups);
  }
}

// Factored rows at q (row stride cols), a and b (row stride groups); x and its group sums xs
// (token strides cols and 8 groups).
struct Factored {
  const float *q, *a, *b;
  int64_t cols, groups;
};

template <int G, bool kAffine, int R, int TT>
void ftile(const Factored& f, int r, const float* x, const float* xs, float* y, size_t ys,
           const float* bias) {
  constexpr int kChunks = G / 8;
  __m256 acc[R][TT];
#pragma GCC unroll 16
  for (int i = 0; i < R; ++i) {
#pragma GCC unroll 16
    for (int t = 0; t < TT; ++t) acc[i][t] = _mm256_setzero_ps();
  }
  const float* q = f.q + r * f.cols;
  for (int64_t g = 0; g < f.groups; ++g) {
    __m256 s[R][TT];
#pragma GCC unroll 16
    for (int c = 0; c < kChunks; ++c) {
      const int64_t at = g * G + 8 * c;
      __m256 wv[R];
#pragma GCC unroll 16
      for (int i = 0; i < R; ++i) wv[i] = _mm256_loadu_ps(q + i * f.cols + at);
#pragma GCC unroll 16
      for (int t = 0; t < TT; ++t) {
        const __m256 xv = _mm256_loadu_ps(x + t * f.cols + at);
#pragma GCC unroll 16
        for (int i = 0; i < R; ++i) {
          s[i][t] = c == 0 ? _mm256_mul_ps(wv[i], xv) : _mm256_fmadd_ps(wv[i], xv, s[i][t]);
        }
      }
    }
#pragma GCC unroll 16
    for (int i = 0; i < R; ++i) {
      const __m256 av = _mm256_set1_ps(f.a[(r + i) * f.groups + g]);
#pragma GCC unroll 16
      for (int t = 0; t < TT; ++t) acc[i][t] = _mm256_fmadd_ps(av, s[i][t], acc[i][t]);
      if constexpr (kAffine) {
        const __m256 bv = _mm256_set1_ps(f.b[(r + i) * f.groups + g]);
#pragma GCC unroll 16
        for (int t = 0; t < TT; ++t) {
          const __m256 sv = _mm256_loadu_ps(xs + (t * f.groups + g) * 8);
          acc[i][t] = _mm256_fmadd_ps(bv, sv, acc[i][t]);
        }
      }
    }
  }
#pragma GCC unroll 16
  for (int t = 0; t < TT; ++t) {
#pragma GCC unroll 16
    for (int i = 0; i < R; ++i) {
      const float d = hsum(acc[i][t]);
      y[t * ys + r + i] = bias != nullptr ? d + bias[r + i] : d;
    }
  }
}

template <int G, bool kAffine, int R, int TT>
void ftiles(const Factored& f, int nr, const float* x, const float* xs, float* y, size_t ys,
            const float* bias) {
  int r = 0;
  for (; r + R <= nr; r += R) ftile<G, kAffine, R, TT>(f, r, x, xs, y, ys, bias);
  for (; r < nr; ++r) ftile<G, kAffine, 1, TT>(f, r, x, xs, y, ys, bias);
}

template <int G, bool kAffine>
void factored_dots(const Factored& f, int nr, const float* x, int n, const float* xs, float* y,
                   size_t ys, const float* bias) {
  const int64_t xst = f.groups * 8;
  // The group sums of tokens t.. (only affine types have them: xs is null otherwise).
  const auto sums = [&](int t) { return kAffine ? xs + t * xst : nullptr; };
  int t = 0;
  for (; t + 3 <= n; t += 3) {
    ftiles<G, kAffine, 2, 3>(f, nr, x + t * f.cols, sums(t), y + t * ys, ys, bias);
  }
  if (n - t == 2) ftiles<G, kAffine, 2, 2>(f, nr, x + t * f.cols, sums(t), y + t * ys, ys, bias);
  if (n - t == 1) ftiles<G, kAffine, 4, 1>(f, nr, x + t * f.cols, sums(t), y + t * ys, ys, bias);
}

using StreamFn = void (*)(const WeightMatrix&, int64_t, int, const float*, const float*, float*,
                          const float*);
using FactorFn = void (*)(const WeightMatrix&, int64_t, int, float*, float*, float*);

struct QuantKernels {
  StreamFn stream = nullptr;  // nullptr: single tokens take the batch path too
  FactorFn factor = nullptr;
};

template <class T>
constexpr QuantKernels kernels_of() {
  return {stream_rows<T>, factor_rows<T>};
}

QuantKernels quant_kernels(GgmlType type) {
  switch (type) {
    case GgmlType::Q8_0:
      return kernels_of<TQ8_0>();
    case GgmlType::Q4_0:
      return kernels_of<TQ4_0>();
    case GgmlType::Q4_1:
      return kernels_of<TQ4_1>();
    case GgmlType::Q5_0:
      return kernels_of<TQ5_0>();
    case GgmlType::Q5_1:
      return kernels_of<TQ5_1>();
    case GgmlType::Q4_K:
      return kernels_of<TQ45_K<false>>();
    case GgmlType::Q5_K:
      return kernels_of<TQ45_K<true>>();
    case GgmlType::Q6_K:
      return kernels_of<TQ6_K>();
    default:  // Q2_K, Q3_K: factored by the scalar code
      return {nullptr, scalar_factor_rows};
  }
}

void avx2_rows(const WeightMatrix& w, int64_t r0, int nr, const float* x, int n, const float* xs,
               float* y, size_t ys, const float* bias) {
  const QuantGroups g = quant_groups(w.type);
  if (g.group == 0) return float_rows(w, r0, nr, x, n, y, ys, bias);
  const QuantKernels k = quant_kernels(w.type);
  // A few tokens (decode, short verify blocks) stream the rows once per token, the task's rows
  // staying in L2 after the first: cheaper than factoring them into floats, below ~4 tokens.
  if (n <= kMaxStreamTokens && k.stream != nullptr) {
    const int64_t per_token = w.cols / g.group * 8;
    for (int t = 0; t < n; ++t) {
      k.stream(w, r0, nr, x + t * w.cols, xs ? xs + t * per_token : nullptr, y + t * ys, bias);
    }
    return;
  }
  const int64_t groups = w.cols / g.group;
  thread_local std::vector<float> q, a, b;
  q.resize(static_cast<size_t>(nr) * w.cols);
  a.resize(static_cast<size_t>(nr * groups));
  b.resize(static_cast<size_t>(nr * groups));
  k.factor(w, r0, nr, q.data(), a.data(), b.data());
  const Factored f{q.data(), a.data(), b.data(), w.cols, groups};
  if (g.group == 32) {
    if (g.affine) return factored_dots<32, true>(f, nr, x, n, xs, y, ys, bias);
    return factored_dots<32, false>(f, nr, x, n, xs, y, ys, bias);
  }
  if (g.affine) return factored_dots<16, true>(f, nr, x, n, xs, y, ys, bias);
  factored_dots<16, false>(f, nr, x, n, xs, y, ys, bias);
}

// ---- 8-bit activations (kernels/qmatmul.h, Activations::kQ8): each chunk of 32 codes as bytes
// in element order, multiplied with the int8 activations by pairs (vpmaddubsw, which cannot
// saturate here: codes are below 64, or signed and taken by magnitude) and summed by fours with
// the group scales (vpmaddwd), exact in int32; then the floats of qmatmul.h.

struct Q8Q8_0 {
  static constexpr GgmlType kType = GgmlType::Q8_0;
  static constexpr size_t kBytes = sizeof(BlockQ8_0);
  static __m256i bytes(const uint8_t* p, int) { return load32(p + 2); }
};
struct Q8Q4_0 {
  static constexpr GgmlType kType = GgmlType::Q4_0;
  static constexpr size_t kBytes = sizeof(BlockQ4_0);
  static __m256i bytes(const uint8_t* p, int) {
    return _mm256_sub_epi8(nibble_bytes(p + 2), _mm256_set1_epi8(8));
  }
};
struct Q8Q4_1 {
  static constexpr GgmlType kType = GgmlType::Q4_1;
  static constexpr size_t kBytes = sizeof(BlockQ4_1);
  static __m256i bytes(const uint8_t* p, int) { return nibble_bytes(p + 4); }
};
struct Q8Q5_0 {
  static constexpr GgmlType kType = GgmlType::Q5_0;
  static constexpr size_t kBytes = sizeof(BlockQ5_0);
  static __m256i bytes(const uint8_t* p, int) {
    const __m256i c = _mm256_or_si256(nibble_bytes(p + 6), bits_to_bytes(le32(p + 2), 16));
    return _mm256_sub_epi8(c, _mm256_set1_epi8(16));
  }
};
struct Q8Q5_1 {
  static constexpr GgmlType kType = GgmlType::Q5_1;
  static constexpr size_t kBytes = sizeof(BlockQ5_1);
  static __m256i bytes(const uint8_t* p, int) {
    return _mm256_or_si256(nibble_bytes(p + 8), bits_to_bytes(le32(p + 4), 16));
  }
};
template <bool kFifthBit>
struct Q8Q45_K {
  static constexpr GgmlType kType = kFifthBit ? GgmlType::Q5_K : GgmlType::Q4_K;
  static constexpr size_t kBytes = kFifthBit ? sizeof(BlockQ5_K) : sizeof(BlockQ4_K);
  // Chunk j: sub-block j, the low nibbles of qs[32 (j / 2) ..] for even j, the high for odd.
  static __m256i bytes(const uint8_t* p, int j) {
    const __m256i v = load32(p + (kFifthBit ? 48 : 16) + 32 * (j / 2));
    const __m256i c = j % 2 == 0 ? low_nibbles(v) : high_nibbles(v);
    if constexpr (!kFifthBit) {
      return c;
    } else {
      const __m256i b = _mm256_and_si256(_mm256_srli_epi16(load32(p + 16), j), _mm256_set1_epi8(1));
      return _mm256_or_si256(c, _mm256_slli_epi16(b, 4));
    }
  }
};
struct Q8Q6_K {
  static constexpr GgmlType kType = GgmlType::Q6_K;
  static constexpr size_t kBytes = sizeof(BlockQ6_K);
  static __m256i bytes(const uint8_t* p, int u) {  // the codes of TQ6_K::codes, before - 32
    const int h = u / 4, k = u % 4;
    const __m256i ql = load32(p + 64 * h + 32 * (k % 2));
    const __m256i lo = k < 2 ? low_nibbles(ql) : high_nibbles(ql);
    const __m256i qh = load32(p + 128 + 32 * h);
    const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(qh, 2 * k), _mm256_set1_epi8(3));
    return _mm256_or_si256(lo, _mm256_slli_epi16(hi, 4));
  }
};

// The sum of the eight int32 lanes (exact).
int32_t hsum_epi32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
  return _mm_cvtsi128_si32(s);
}

// A K-quant block's integer scales for vpmaddwd: scale(j) gives chunk j's scales as int16
// lanes (lanes 0..7 the first 16 elements' group, 8..15 the second's), mins(xs16) the block's
// M from the 16 sums of 16 activations, and d, e the floats of q8_scales.
struct KScales {
  __m256i lo, hi;  // int16 scales, both 128-bit lanes alike (hi: Q6_K's groups 8..15)
  __m256i m16;     // the offset of each 16 elements' group, as int16
  float d, e;

  __m256i scale(int j, bool sixteen) const {
    if (!sixteen) {  // group 32: lanes of chunk j all hold scale j (int16 j = bytes 2j, 2j+1)
      const char b0 = static_cast<char>(2 * j), b1 = static_cast<char>(2 * j + 1);
      return _mm256_shuffle_epi8(
          lo, _mm256_setr_epi8(b0, b1, b0, b1, b0, b1, b0, b1, b0, b1, b0, b1, b0, b1, b0, b1, b0,
                               b1, b0, b1, b0, b1, b0, b1, b0, b1, b0, b1, b0, b1, b0, b1));
    }
    // group 16: chunk j's first half has scale 2j, its second 2j + 1 (of lo for j < 4).
    const int i = 2 * (j % 4);
    const char a0 = static_cast<char>(2 * i), a1 = static_cast<char>(2 * i + 1);
    const char c0 = static_cast<char>(2 * i + 2), c1 = static_cast<char>(2 * i + 3);
    return _mm256_shuffle_epi8(
        j < 4 ? lo : hi,
        _mm256_setr_epi8(a0, a1, a0, a1, a0, a1, a0, a1, a0, a1, a0, a1, a0, a1, a0, a1, c0, c1, c0,
                         c1, c0, c1, c0, c1, c0, c1, c0, c1, c0, c1, c0, c1));
  }
  int32_t mins(const int16_t* xs16) const {
    return hsum_epi32(_mm256_madd_epi16(m16, load32(reinterpret_cast<const uint8_t*>(xs16))));
  }
};

template <GgmlType kType>
KScales k_scales(const uint8_t* p) {
  KScales k;
  if constexpr (kType == GgmlType::Q6_K) {
    k.d = half_at(p + 208);
    k.e = k.d;
    const __m256i sc = _mm256_cvtepi8_epi16(load16(p + 192));
    k.lo = _mm256_permute2x128_si256(sc, sc, 0x00);
    k.hi = _mm256_permute2x128_si256(sc, sc, 0x11);
    k.m16 = _mm256_mullo_epi16(sc, _mm256_set1_epi16(-32));
  } else {  // Q4_K, Q5_K: the 6-bit scales and mins unpacked a word at a time
    k.d = half_at(p);
    k.e = -half_at(p + 2);
    const uint32_t u0 = le32(p + 4), u1 = le32(p + 8), u2 = le32(p + 12);
    const uint32_t sc_hi = (u2 & 0x0f0f0f0fu) | (((u0 >> 6) & 0x03030303u) << 4);
    const uint32_t mn_hi = ((u2 >> 4) & 0x0f0f0f0fu) | (((u1 >> 6) & 0x03030303u) << 4);
    const auto i32 = [](uint32_t v) { return static_cast<int>(v); };
    const __m128i scb = _mm_setr_epi32(i32(u0 & 0x3f3f3f3fu), i32(sc_hi), 0, 0);
    const __m128i mnb = _mm_setr_epi32(i32(u1 & 0x3f3f3f3fu), i32(mn_hi), 0, 0);
    const __m128i sc16 = _mm_cvtepu8_epi16(scb);
    k.lo = _mm256_set_m128i(sc16, sc16);
    k.hi = k.lo;
    k.m16 = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(mnb, mnb));  // m0, m0, m1, m1, ..
  }
  return k;
}

// One row with NT tokens (t0 .. t0 + NT - 1): each block's codes are read once and multiplied
// with every token's activations.
template <class T, int NT>
void q8_row(const WeightMatrix& w, int64_t r, const Q8Acts& x, int t0, float* y, size_t ys,
            float bias) {
  constexpr bool kK =
      T::kType == GgmlType::Q4_K || T::kType == GgmlType::Q5_K || T::kType == GgmlType::Q6_K;
  constexpr bool kSigned =
      T::kType == GgmlType::Q8_0 || T::kType == GgmlType::Q4_0 || T::kType == GgmlType::Q5_0;
  const int64_t blocks = w.cols / (kK ? 256 : 32);
  __m256 acc[NT];
  float sm[NT];
#pragma GCC unroll 8
  for (int t = 0; t < NT; ++t) {
    acc[t] = _mm256_setzero_ps();
    sm[t] = 0.0f;
  }
  const uint8_t* row = w.row(r);
  for (int64_t k = 0; k < blocks; ++k) {
    const uint8_t* p = row + k * T::kBytes;
    if constexpr (kK) {  // 8 chunks with their group scales; the mins from the sums
      const KScales sc = k_scales<T::kType>(p);
      __m256i iv[NT];
#pragma GCC unroll 8
      for (int t = 0; t < NT; ++t) iv[t] = _mm256_setzero_si256();
#pragma GCC unroll 8
      for (int j = 0; j < 8; ++j) {
        const __m256i c = T::bytes(p, j);
        const __m256i s = sc.scale(j, T::kType == GgmlType::Q6_K);
#pragma GCC unroll 8
        for (int t = 0; t < NT; ++t) {
          const int8_t* xb = x.q + static_cast<size_t>(t0 + t) * x.cols + 256 * k + 32 * j;
          const __m256i prod =
              _mm256_maddubs_epi16(c, load32(reinterpret_cast<const uint8_t*>(xb)));
          iv[t] = _mm256_add_epi32(iv[t], _mm256_madd_epi16(prod, s));
        }
      }
#pragma GCC unroll 8
      for (int t = 0; t < NT; ++t) {
        const size_t tt = static_cast<size_t>(t0 + t);
        const float dx = x.d[tt * (x.cols / 256) + k];
        acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(sc.d * dx), cvt(iv[t]), acc[t]);
        const int32_t m = sc.mins(x.sum16 + tt * (x.cols / 16) + 16 * k);
        sm[t] = std::fma(sc.e * dx, static_cast<float>(m), sm[t]);
      }
    } else {  // one chunk, scale 1; Q4_1 and Q5_1 add e times the block's sum (m = 1)
      Q8Scales sc;
      q8_scales(T::kType, p, &sc, half_at);
      const __m256i c = T::bytes(p, 0);
      const __m256i ac = kSigned ? _mm256_abs_epi8(c) : c;
#pragma GCC unroll 8
      for (int t = 0; t < NT; ++t) {
        const size_t tt = static_cast<size_t>(t0 + t);
        const __m256i xv = load32(reinterpret_cast<const uint8_t*>(x.q + tt * x.cols + 32 * k));
        const __m256i prod = _mm256_maddubs_epi16(ac, kSigned ? _mm256_sign_epi8(xv, c) : xv);
        const float dx = x.d[tt * (x.cols / 32) + k];
        acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(sc.d * dx),
                                 cvt(_mm256_madd_epi16(prod, _mm256_set1_epi16(1))), acc[t]);
        if constexpr (!kSigned) {
          const int16_t* sb = x.sum16 + tt * (x.cols / 16) + 2 * k;
          sm[t] = std::fma(sc.e * dx, static_cast<float>(sb[0] + sb[1]), sm[t]);
        }
      }
    }
  }
#pragma GCC unroll 8
  for (int t = 0; t < NT; ++t) y[t * ys] = (hsum(acc[t]) + sm[t]) + bias;
}

// One row at a time (rows read side by side stream from memory at about half the rate of one
// row read alone, qmatmul_bench's DRAM column; the hardware prefetcher follows one row well),
// with up to 8 tokens.
template <class T>
void q8_rows_of(const WeightMatrix& w, int64_t r0, int nr, const Q8Acts& x, int n, float* y,
                size_t ys, const float* bias) {
  const auto tile = [&]<int NT>(int t) {
    for (int r = 0; r < nr; ++r) {
      const float b = bias != nullptr ? bias[r] : 0.0f;
      q8_row<T, NT>(w, r0 + r, x, t, y + static_cast<size_t>(t) * ys + r, ys, b);
    }
  };
  int t = 0;
  for (; t + 8 <= n; t += 8) tile.template operator()<8>(t);
  for (; t + 4 <= n; t += 4) tile.template operator()<4>(t);
  if (n - t == 3) tile.template operator()<3>(t);
  if (n - t == 2) tile.template operator()<2>(t);
  if (n - t == 1) tile.template operator()<1>(t);
}

void avx2_q8_rows(const WeightMatrix& w, int64_t r0, int nr, const Q8Acts& x, int n, float* y,
                  size_t ys, const float* bias) {
  switch (w.type) {
    case GgmlType::Q8_0:
      return q8_rows_of<Q8Q8_0>(w, r0, nr, x, n, y, ys, bias);
    case GgmlType::Q4_0:
      return q8_rows_of<Q8Q4_0>(w, r0, nr, x, n, y, ys, bias);
    case GgmlType::Q4_1:
      return q8_rows_of<Q8Q4_1>(w, r0, nr, x, n, y, ys, bias);
    case GgmlType::Q5_0:
      return q8_rows_of<Q8Q5_0>(w, r0, nr, x, n, y, ys, bias);
    case GgmlType::Q5_1:
      return q8_rows_of<Q8Q5_1>(w, r0, nr, x, n, y, ys, bias);
    case GgmlType::Q4_K:
      return q8_rows_of<Q8Q45_K<false>>(w, r0, nr, x, n, y, ys, bias);
    case GgmlType::Q5_K:
      return q8_rows_of<Q8Q45_K<true>>(w, r0, nr, x, n, y, ys, bias);
    case GgmlType::Q6_K:
      return q8_rows_of<Q8Q6_K>(w, r0, nr, x, n, y, ys, bias);
    default:
      return generic_q8_rows(w, r0, nr, x, n, y, ys, bias);
  }
}

}  // namespace

const QmatmulIsa kAvx2Isa{avx2_rows, avx2_q8_rows};

}  // namespace dsi::kernels::detail
