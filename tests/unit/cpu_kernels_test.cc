// The CPU kernels against naive double-precision loops written straight from the formulas.
#include <gtest/gtest.h>

#include <cmath>
#include <complex>
#include <random>
#include <vector>

#include "kernels/attention.h"
#include "kernels/embedding.h"
#include "kernels/matmul.h"
#include "kernels/rmsnorm.h"
#include "kernels/rope.h"
#include "kernels/softmax.h"
#include "kernels/swiglu.h"

namespace dsi::kernels {
namespace {

std::vector<float> randn(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

double max_abs_diff(const std::vector<float>& a, const std::vector<double>& b) {
  EXPECT_EQ(a.size(), b.size());
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::abs(a[i] - b[i]));
  return m;
}

TEST(CpuKernels, RmsNorm) {
  const int n = 3, dim = 70;
  auto x = randn(n * dim, 1), w = randn(dim, 2);
  std::vector<float> y(n * dim);
  rmsnorm_cpu(y.data(), x.data(), w.data(), n, dim, 1e-5f);
  std::vector<double> ref(n * dim);
  for (int r = 0; r < n; ++r) {
    double ms = 0;
    for (int i = 0; i < dim; ++i) ms += double(x[r * dim + i]) * x[r * dim + i] / dim;
    for (int i = 0; i < dim; ++i) ref[r * dim + i] = x[r * dim + i] / std::sqrt(ms + 1e-5) * w[i];
  }
  EXPECT_LT(max_abs_diff(y, ref), 1e-5);
  rmsnorm_cpu(x.data(), x.data(), w.data(), n, dim, 1e-5f);  // in place
  EXPECT_EQ(x, y);
}

// Rotation as complex multiplication of the pair (a + ib) by e^{i pos theta_i}.
std::vector<double> rope_naive(const std::vector<float>& x, const std::vector<int32_t>& pos,
                               int n_heads, int head_dim, int rot_dim, double base, bool adjacent) {
  std::vector<double> y(x.begin(), x.end());
  for (size_t r = 0; r < pos.size(); ++r)
    for (int h = 0; h < n_heads; ++h)
      for (int i = 0; i < rot_dim / 2; ++i) {
        const size_t o = (r * n_heads + h) * head_dim;
        const size_t a = o + (adjacent ? 2 * i : i),
                     b = o + (adjacent ? 2 * i + 1 : i + rot_dim / 2);
        const double theta = pos[r] * std::pow(base, -2.0 * i / rot_dim);
        const std::complex<double> z = std::complex<double>(x[a], x[b]) * std::polar(1.0, theta);
        y[a] = z.real();
        y[b] = z.imag();
      }
  return y;
}

TEST(CpuKernels, RopeBothLayoutsAndPartialRotation) {
  const int n_heads = 3, head_dim = 16;
  std::vector<int32_t> pos{0, 1, 7, 2047};
  for (bool adjacent : {true, false}) {
    for (int rot_dim : {16, 8}) {
      auto x = randn(pos.size() * n_heads * head_dim, 3);
      auto ref = rope_naive(x, pos, n_heads, head_dim, rot_dim, 10000.0, adjacent);
      rope_cpu(x.data(), pos.data(), static_cast<int>(pos.size()), n_heads, head_dim, rot_dim,
               10000.0f, adjacent ? RopeLayout::kAdjacentPairs : RopeLayout::kHalfSplit);
      EXPECT_LT(max_abs_diff(x, ref), 2e-6) << adjacent << " " << rot_dim;
    }
  }
}

TEST(CpuKernels, RopeHalfSplitIsAdjacentUnderPermutation) {
  // HF -> GGUF conversion permutes q/k rows so that half-split pairs become adjacent ones.
  const int head_dim = 8;
  auto x = randn(head_dim, 4);
  std::vector<float> p(head_dim);
  for (int i = 0; i < head_dim / 2; ++i) {
    p[2 * i] = x[i];
    p[2 * i + 1] = x[i + head_dim / 2];
  }
  int32_t pos = 5;
  rope_cpu(x.data(), &pos, 1, 1, head_dim, head_dim, 500.0f, RopeLayout::kHalfSplit);
  rope_cpu(p.data(), &pos, 1, 1, head_dim, head_dim, 500.0f, RopeLayout::kAdjacentPairs);
  for (int i = 0; i < head_dim / 2; ++i) {
    EXPECT_FLOAT_EQ(p[2 * i], x[i]);
    EXPECT_FLOAT_EQ(p[2 * i + 1], x[i + head_dim / 2]);
  }
}

struct AttnCase {
  int n_q, n_kv, q_pos0, n_heads, n_kv_heads, head_dim;
};

std::vector<double> attention_naive(const std::vector<float>& q, const std::vector<float>& k,
                                    const std::vector<float>& v, const AttnCase& c,
                                    const std::vector<uint8_t>* mask) {
  const int kv_dim = c.n_kv_heads * c.head_dim, q_dim = c.n_heads * c.head_dim;
  std::vector<double> out(c.n_q * q_dim, 0.0);
  for (int h = 0; h < c.n_heads; ++h) {
    const int g = h * c.n_kv_heads / c.n_heads;
    for (int i = 0; i < c.n_q; ++i) {
      std::vector<double> s(c.n_kv, -INFINITY);
      for (int j = 0; j < c.n_kv; ++j) {
        const bool vis = mask ? (*mask)[i * c.n_kv + j] != 0 : j <= c.q_pos0 + i;
        if (!vis) continue;
        double d = 0;
        for (int e = 0; e < c.head_dim; ++e)
          d += double(q[i * q_dim + h * c.head_dim + e]) * k[j * kv_dim + g * c.head_dim + e];
        s[j] = d / std::sqrt(double(c.head_dim));
      }
      double mx = -INFINITY, z = 0;
      for (double x : s) mx = std::max(mx, x);
      for (double& x : s) z += (x = std::exp(x - mx));
      for (int j = 0; j < c.n_kv; ++j)
        for (int e = 0; e < c.head_dim; ++e)
          out[i * q_dim + h * c.head_dim + e] += s[j] / z * v[j * kv_dim + g * c.head_dim + e];
    }
  }
  return out;
}

TEST(CpuKernels, AttentionCausalGqa) {
  for (AttnCase c : {AttnCase{1, 1, 0, 4, 4, 8}, AttnCase{1, 9, 8, 8, 2, 16},
                     AttnCase{5, 5, 0, 6, 2, 32}, AttnCase{4, 11, 7, 4, 1, 8}}) {
    const int kv_dim = c.n_kv_heads * c.head_dim;
    auto q = randn(c.n_q * c.n_heads * c.head_dim, 5);
    auto k = randn(c.n_kv * kv_dim, 6), v = randn(c.n_kv * kv_dim, 7);
    std::vector<float> out(q.size());
    // Two calls over disjoint head ranges, as the engine's threads make them.
    attention_cpu(out.data(), q.data(), k.data(), v.data(), nullptr, c.n_q, c.n_kv, c.q_pos0,
                  c.n_heads, c.n_kv_heads, c.head_dim, kv_dim, 0, c.n_heads / 2);
    attention_cpu(out.data(), q.data(), k.data(), v.data(), nullptr, c.n_q, c.n_kv, c.q_pos0,
                  c.n_heads, c.n_kv_heads, c.head_dim, kv_dim, c.n_heads / 2, c.n_heads);
    EXPECT_LT(max_abs_diff(out, attention_naive(q, k, v, c, nullptr)), 1e-5);
  }
}

TEST(CpuKernels, AttentionExplicitTreeMask) {
  // Prefix of 3 keys, then a tree: node 3 (root), nodes 4 and 5 both children of 3.
  AttnCase c{3, 6, 3, 4, 2, 8};
  std::vector<uint8_t> mask = {1, 1, 1, 1, 0, 0,  //
                               1, 1, 1, 1, 1, 0,  //
                               1, 1, 1, 1, 0, 1};
  const int kv_dim = c.n_kv_heads * c.head_dim;
  auto q = randn(c.n_q * c.n_heads * c.head_dim, 8);
  auto k = randn(c.n_kv * kv_dim, 9), v = randn(c.n_kv * kv_dim, 10);
  std::vector<float> out(q.size());
  attention_cpu(out.data(), q.data(), k.data(), v.data(), mask.data(), c.n_q, c.n_kv, 0, c.n_heads,
                c.n_kv_heads, c.head_dim, kv_dim, 0, c.n_heads);
  EXPECT_LT(max_abs_diff(out, attention_naive(q, k, v, c, &mask)), 1e-5);
  // A lower-triangular mask gives exactly the causal result.
  std::vector<uint8_t> causal(c.n_q * c.n_kv);
  for (int i = 0; i < c.n_q; ++i)
    for (int j = 0; j < c.n_kv; ++j) causal[i * c.n_kv + j] = j <= c.q_pos0 + i;
  std::vector<float> a(q.size()), b(q.size());
  attention_cpu(a.data(), q.data(), k.data(), v.data(), causal.data(), c.n_q, c.n_kv, 0, c.n_heads,
                c.n_kv_heads, c.head_dim, kv_dim, 0, c.n_heads);
  attention_cpu(b.data(), q.data(), k.data(), v.data(), nullptr, c.n_q, c.n_kv, c.q_pos0, c.n_heads,
                c.n_kv_heads, c.head_dim, kv_dim, 0, c.n_heads);
  EXPECT_EQ(a, b);
}

TEST(CpuKernels, SwigluAndSoftmax) {
  auto g = randn(100, 11, 3.0f), u = randn(100, 12);
  std::vector<float> y(100);
  swiglu_cpu(y.data(), g.data(), u.data(), 100);
  std::vector<double> ref(100);
  for (int i = 0; i < 100; ++i) ref[i] = g[i] / (1 + std::exp(-double(g[i]))) * u[i];
  EXPECT_LT(max_abs_diff(y, ref), 1e-5);

  auto x = randn(2 * 50, 13, 10.0f);
  x[3] = -INFINITY;
  std::vector<double> sref(x.size());
  for (int r = 0; r < 2; ++r) {
    double z = 0;
    for (int i = 0; i < 50; ++i) z += std::exp(double(x[r * 50 + i]));
    for (int i = 0; i < 50; ++i) sref[r * 50 + i] = std::exp(double(x[r * 50 + i])) / z;
  }
  softmax_cpu(x.data(), 2, 50);
  EXPECT_LT(max_abs_diff(x, sref), 1e-6);
  EXPECT_EQ(x[3], 0.0f);
}

TEST(CpuKernels, MatmulSingleRowAndBatchWithBias) {
  const int in = 37, out = 23;
  auto w = randn(out * in, 14), b = randn(out, 15);
  for (int n : {1, 4}) {
    auto x = randn(n * in, 16);
    for (bool with_bias : {false, true}) {
      std::vector<float> y(n * out);
      matmul_cpu(y.data(), x.data(), w.data(), with_bias ? b.data() : nullptr, n, in, out);
      std::vector<double> ref(n * out);
      for (int r = 0; r < n; ++r)
        for (int o = 0; o < out; ++o) {
          double s = with_bias ? b[o] : 0.0;
          for (int i = 0; i < in; ++i) s += double(w[o * in + i]) * x[r * in + i];
          ref[r * out + o] = s;
        }
      EXPECT_LT(max_abs_diff(y, ref), 1e-4) << n << with_bias;
    }
  }
}

TEST(CpuKernels, Embedding) {
  auto table = randn(5 * 3, 17);
  std::vector<int32_t> tok{4, 0, 4};
  std::vector<float> y(9);
  embedding_cpu(y.data(), table.data(), tok.data(), 3, 3);
  for (int i = 0; i < 3; ++i)
    for (int d = 0; d < 3; ++d) EXPECT_EQ(y[i * 3 + d], table[tok[i] * 3 + d]);
}

}  // namespace
}  // namespace dsi::kernels
