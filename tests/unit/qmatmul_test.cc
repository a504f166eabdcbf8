// Products over weights in their GGUF types (kernels/qmatmul.h): for every type, every result is
// bit for bit the fixed arithmetic of dot_reference over the factored weights, whatever
// the batch size, the position of the token in the batch, the thread count, the instruction
// set, and whether the products share one call.
#include "kernels/qmatmul.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "common/thread_pool.h"
#include "kernels/dequant.h"
#include "kernels/half.h"
#include "tests/quant_test_data.h"

namespace dsi::kernels {
namespace {

using quant_test::random_floats;
using quant_test::random_matrix;

const GgmlType kTypes[] = {GgmlType::F32,  GgmlType::F16,  GgmlType::BF16, GgmlType::Q8_0,
                           GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1,
                           GgmlType::Q2_K, GgmlType::Q3_K, GgmlType::Q4_K, GgmlType::Q5_K,
                           GgmlType::Q6_K};

// Columns that exercise whole blocks and, for the float types, a partial last chunk.
int64_t test_cols(GgmlType t) {
  const int64_t block = ggml_block_size(t);
  return block == 1 ? 203 : (block == 32 ? 8 * 32 : 2 * 256);
}

struct Case {
  GgmlType type;
  int64_t rows, cols;
  std::vector<uint8_t> bytes;
  WeightMatrix w;
  std::vector<float> deq;  // reference dequantization, row-major
  std::vector<float> bias;

  Case(GgmlType t, int64_t r, uint32_t seed) : type(t), rows(r), cols(test_cols(t)) {
    bytes = random_matrix(t, rows, cols, seed);
    w = weight_matrix(t, bytes.data(), rows, cols);
    deq.resize(static_cast<size_t>(rows * cols));
    for (int64_t i = 0; i < rows; ++i) dequantize_row(t, w.row(i), deq.data() + i * cols, cols);
    bias = random_floats(static_cast<size_t>(rows), seed + 1);
  }

  float expected(const std::vector<float>& x, int token, int64_t r, bool with_bias) const {
    const float d = dot_reference(w, r, x.data() + token * cols);
    return with_bias ? d + bias[r] : d;
  }
};

uint32_t bits(float f) {
  return f32_to_bits(f);
}

std::vector<KernelIsa> isas() {
  std::vector<KernelIsa> v{KernelIsa::kGeneric};
  if (kernel_isa_supported(KernelIsa::kAvx2)) v.push_back(KernelIsa::kAvx2);
  return v;
}

class Qmatmul : public ::testing::TestWithParam<GgmlType> {};

TEST_P(Qmatmul, EveryResultIsTheReferenceArithmetic) {
  const GgmlType type = GetParam();
  const Case c(type, 37, 1234 + static_cast<uint32_t>(type));
  const int max_n = 13;
  const auto x = random_floats(static_cast<size_t>(max_n * c.cols), 99);
  for (KernelIsa isa : isas()) {
    for (int threads : {1, 2, 3, 4}) {
      ThreadPool pool(threads);
      for (int n : {1, 2, 3, 4, 5, 8, 13}) {
        for (bool with_bias : {false, true}) {
          std::vector<float> y(static_cast<size_t>(n * c.rows), NAN);
          qmatmul(y.data(), x.data(), c.w, with_bias ? c.bias.data() : nullptr, n, &pool, isa);
          int wrong = 0;
          for (int t = 0; t < n; ++t) {
            for (int64_t r = 0; r < c.rows; ++r) {
              const float want = c.expected(x, t, r, with_bias);
              const float got = y[t * c.rows + r];
              if (bits(got) != bits(want) && ++wrong <= 3) {
                ADD_FAILURE() << ggml_type_name(type) << " " << kernel_isa_name(isa) << " n=" << n
                              << " threads=" << threads << " token " << t << " row " << r << ": "
                              << got << " != reference " << want;
              }
            }
          }
          ASSERT_EQ(wrong, 0);
        }
      }
    }
  }
}

// A token's results do not depend on which other tokens share the batch, nor where it sits.
TEST_P(Qmatmul, BatchInvariant) {
  const GgmlType type = GetParam();
  const Case c(type, 21, 77 + static_cast<uint32_t>(type));
  const auto x = random_floats(static_cast<size_t>(9 * c.cols), 5);
  for (KernelIsa isa : isas()) {
    std::vector<float> alone(static_cast<size_t>(9 * c.rows));
    for (int t = 0; t < 9; ++t) {
      qmatmul(alone.data() + t * c.rows, x.data() + t * c.cols, c.w, nullptr, 1, nullptr, isa);
    }
    for (int offset = 0; offset < 9; ++offset) {
      for (int n = 1; offset + n <= 9; ++n) {
        std::vector<float> y(static_cast<size_t>(n * c.rows));
        qmatmul(y.data(), x.data() + offset * c.cols, c.w, nullptr, n, nullptr, isa);
        ASSERT_EQ(0, std::memcmp(y.data(), alone.data() + offset * c.rows, y.size() * 4))
            << ggml_type_name(type) << " " << kernel_isa_name(isa) << " block of " << n
            << " at offset " << offset;
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllTypes, Qmatmul, ::testing::ValuesIn(kTypes),
                         [](const auto& info) { return std::string(ggml_type_name(info.param)); });

// ---- 8-bit activations (Activations::kQ8).

const GgmlType kQ8Types[] = {GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0,
                             GgmlType::Q5_1, GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K};

class Qmatmul8 : public ::testing::TestWithParam<GgmlType> {};

// Every variant, batch, token position and thread count gives dot_q8_reference's bits.
TEST_P(Qmatmul8, EveryResultIsTheReferenceArithmetic) {
  const GgmlType type = GetParam();
  ASSERT_TRUE(q8_supported(type));
  const Case c(type, 37, 4321 + static_cast<uint32_t>(type));
  const int max_n = 9;
  const auto x = random_floats(static_cast<size_t>(max_n * c.cols), 17);
  for (KernelIsa isa : isas()) {
    for (int threads : {1, 2, 3}) {
      ThreadPool pool(threads);
      for (int n : {1, 2, 3, 4, 5, 9}) {
        for (bool with_bias : {false, true}) {
          std::vector<float> y(static_cast<size_t>(n * c.rows), NAN);
          qmatmul(y.data(), x.data(), c.w, with_bias ? c.bias.data() : nullptr, n, &pool, isa,
                  Activations::kQ8);
          for (int t = 0; t < n; ++t) {
            for (int64_t r = 0; r < c.rows; ++r) {
              const float d = dot_q8_reference(c.w, r, x.data() + t * c.cols);
              const float want = d + (with_bias ? c.bias[r] : 0.0f);
              ASSERT_EQ(bits(y[t * c.rows + r]), bits(want))
                  << ggml_type_name(type) << " " << kernel_isa_name(isa) << " n=" << n
                  << " threads=" << threads << " token " << t << " row " << r;
            }
          }
        }
      }
    }
  }
}

// The 8-bit products are the exact ones up to rounding each activation to its block's grid:
// |error| <= sum over blocks of (dx / 2) * sum |w| of the block, plus float rounding; and not
// the exact ones (the mode is in effect).
TEST_P(Qmatmul8, ErrorIsBoundedByTheActivationRounding) {
  const GgmlType type = GetParam();
  const Case c(type, 29, 99 + static_cast<uint32_t>(type));
  const int64_t block = ggml_block_size(type);
  const auto x = random_floats(static_cast<size_t>(c.cols), 23);
  std::vector<float> y8(static_cast<size_t>(c.rows)), y32(y8.size());
  qmatmul(y8.data(), x.data(), c.w, nullptr, 1, nullptr, kernel_isa(), Activations::kQ8);
  qmatmul(y32.data(), x.data(), c.w, nullptr, 1, nullptr, kernel_isa(), Activations::kF32);
  int differ = 0;
  for (int64_t r = 0; r < c.rows; ++r) {
    double bound = 0, magnitude = 0;
    for (int64_t b = 0; b < c.cols / block; ++b) {
      double amax = 0, wsum = 0;
      for (int64_t i = b * block; i < (b + 1) * block; ++i) {
        amax = std::max(amax, std::fabs(double(x[i])));
        wsum += std::fabs(double(c.deq[r * c.cols + i]));
        magnitude += std::fabs(double(c.deq[r * c.cols + i]) * x[i]);
      }
      bound += amax / 127 / 2 * wsum;
    }
    EXPECT_LE(std::fabs(double(y8[r]) - y32[r]), bound * 1.001 + 1e-5 * magnitude + 1e-30)
        << ggml_type_name(type) << " row " << r;
    differ += y8[r] != y32[r];
  }
  EXPECT_GT(differ, 0) << ggml_type_name(type);
}

INSTANTIATE_TEST_SUITE_P(Q8Types, Qmatmul8, ::testing::ValuesIn(kQ8Types),
                         [](const auto& info) { return std::string(ggml_type_name(info.param)); });

// The types without 8-bit products keep float32 activations in that mode, bit for bit.
TEST(Qmatmul8Fallback, OtherTypesComputeAsWithFloatActivations) {
  for (GgmlType type : kTypes) {
    if (q8_supported(type)) continue;
    const Case c(type, 11, 5);
    const auto x = random_floats(static_cast<size_t>(3 * c.cols), 6);
    std::vector<float> a(static_cast<size_t>(3 * c.rows)), b(a.size());
    qmatmul(a.data(), x.data(), c.w, nullptr, 3, nullptr, kernel_isa(), Activations::kQ8);
    qmatmul(b.data(), x.data(), c.w, nullptr, 3, nullptr, kernel_isa(), Activations::kF32);
    EXPECT_EQ(0, std::memcmp(a.data(), b.data(), a.size() * 4)) << ggml_type_name(type);
  }
  EXPECT_EQ(parse_activations("q8"), Activations::kQ8);
  EXPECT_THROW(parse_activations("int8"), std::invalid_argument);
}

TEST(QmatmulJobs, SharedCallEqualsSeparateCalls) {
  const Case a(GgmlType::Q4_K, 40, 1), b(GgmlType::Q6_K, 17, 2), d(GgmlType::Q8_0, 9, 3);
  ASSERT_EQ(a.cols, b.cols);
  std::vector<float> x = random_floats(static_cast<size_t>(6 * a.cols), 4);
  // Q8_0 has 32-element blocks: its own column count; give it its own call.
  std::vector<float> ya(6 * 40), yb(6 * 17), sa(6 * 40), sb(6 * 17);
  ThreadPool pool(3);
  const MatmulJob jobs[] = {{ya.data(), &a.w, a.bias.data()}, {yb.data(), &b.w, nullptr}};
  qmatmul(jobs, x.data(), 6, a.cols, &pool);
  qmatmul(sa.data(), x.data(), a.w, a.bias.data(), 6, nullptr);
  qmatmul(sb.data(), x.data(), b.w, nullptr, 6, nullptr);
  EXPECT_EQ(0, std::memcmp(ya.data(), sa.data(), ya.size() * 4));
  EXPECT_EQ(0, std::memcmp(yb.data(), sb.data(), yb.size() * 4));
  EXPECT_THROW(qmatmul(std::span<const MatmulJob>(jobs), x.data(), 6, d.cols, nullptr),
               std::invalid_argument);
}

TEST(QmatmulReference, FloatTypesAreAnFmaChainOverEightLanes) {
  // 19 values: lanes l, l+8 and l+16 share an accumulator; the sum is the documented tree.
  std::vector<float> w(19), x(19);
  for (int i = 0; i < 19; ++i) {
    w[i] = 1.0f + static_cast<float>(i) / 3.0f;
    x[i] = 0.5f - static_cast<float>(i) / 7.0f;
  }
  float acc[8] = {};
  for (int i = 0; i < 24; ++i) {
    const float wi = i < 19 ? w[i] : 0.0f, xi = i < 19 ? x[i] : 0.0f;
    acc[i % 8] = std::fma(wi, xi, acc[i % 8]);
  }
  const float want =
      ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
  EXPECT_EQ(bits(dot_reference(weight_matrix(GgmlType::F32, w.data(), 1, 19), 0, x.data())),
            bits(want));
}

// The documented arithmetic for an affine type, spelt out from the block's own fields: two Q4_1
// blocks, codes read from the nibbles, scale d and offset m from the halves.
TEST(QmatmulReference, QuantizedGroupsScaleSumsOfCodeProducts) {
  const auto bytes = random_matrix(GgmlType::Q4_1, 1, 64, 3);
  const auto x = random_floats(64, 4);
  float acc[8] = {};
  for (int b = 0; b < 2; ++b) {
    BlockQ4_1 blk;
    std::memcpy(&blk, bytes.data() + b * sizeof blk, sizeof blk);
    const float* xb = x.data() + 32 * b;
    auto code = [&](int e) {
      return static_cast<float>(e < 16 ? blk.qs[e] & 15 : blk.qs[e - 16] >> 4);
    };
    float s[8], xs[8];
    for (int l = 0; l < 8; ++l) {
      s[l] = code(l) * xb[l];
      xs[l] = xb[l];
      for (int c = 1; c < 4; ++c) {
        s[l] = std::fma(code(8 * c + l), xb[8 * c + l], s[l]);
        xs[l] += xb[8 * c + l];
      }
      acc[l] = std::fma(fp16_to_fp32(blk.d), s[l], acc[l]);
      acc[l] = std::fma(fp16_to_fp32(blk.m), xs[l], acc[l]);
    }
  }
  const float want =
      ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
  const WeightMatrix w = weight_matrix(GgmlType::Q4_1, bytes.data(), 1, 64);
  EXPECT_EQ(bits(dot_reference(w, 0, x.data())), bits(want));
  float y = 0;
  for (KernelIsa isa : isas()) {
    qmatmul(&y, x.data(), w, nullptr, 1, nullptr, isa);
    EXPECT_EQ(bits(y), bits(want)) << kernel_isa_name(isa);
  }
}

// The factored form is the dequantization: fma(a, q, b) gives dequantize_row's value, bit for
// bit, for every element of every quantized type, with integer codes.
TEST(QmatmulReference, FactoredFormIsTheDequantization) {
  for (GgmlType type : kTypes) {
    const QuantGroups g = quant_groups(type);
    if (g.group == 0) continue;
    const Case c(type, 5, 11 + static_cast<uint32_t>(type));
    std::vector<float> q(c.cols), a(c.cols / g.group), b(a.size());
    for (int64_t r = 0; r < c.rows; ++r) {
      factor_row(type, c.w.row(r), c.cols, q.data(), a.data(), b.data());
      for (int64_t i = 0; i < c.cols; ++i) {
        const float want = c.deq[r * c.cols + i];
        ASSERT_EQ(q[i], std::nearbyint(q[i])) << ggml_type_name(type);
        const float got = std::fma(a[i / g.group], q[i], b[i / g.group]);
        // (A zero may differ in sign: d * 0 is -0 for a negative scale, fma(d, 0, +0) is +0.)
        ASSERT_TRUE(want == 0.0f ? got == 0.0f : bits(got) == bits(want))
            << ggml_type_name(type) << " row " << r << " element " << i << ": " << got
            << " != " << want;
        if (!g.affine) {
          ASSERT_EQ(b[i / g.group], 0.0f);
        }
      }
    }
  }
}

TEST(QmatmulErrors, BadShapesAndTypesAreRefused) {
  std::vector<uint8_t> bytes(1024);
  EXPECT_THROW(weight_matrix(GgmlType::Q4_K, bytes.data(), 1, 100), std::invalid_argument);
  EXPECT_THROW(weight_matrix(static_cast<GgmlType>(23), bytes.data(), 1, 256),
               std::invalid_argument);
  EXPECT_THROW(weight_matrix(GgmlType::F32, bytes.data(), -1, 4), std::invalid_argument);
}

}  // namespace
}  // namespace dsi::kernels
