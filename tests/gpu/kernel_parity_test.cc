// Every CUDA kernel against its CPU twin on random inputs, one parameterised test: each case
// runs both, reports the normalised mean squared error
//   nmse = sum (gpu - cpu)^2 / sum cpu^2
// and fails above the kernel's threshold (kThresholds below says why each is what it is).
// Without a CUDA device every case is skipped with a message. With --perf each case is also
// timed with cudaEvents (median of --iters launches after a warm-up) and a table is printed:
//   dsi_gpu_tests --perf [--iters 50] [--gtest_filter=...]
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <optional>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "kernels/argmax.h"
#include "kernels/argmax_cuda.h"
#include "kernels/attention.h"
#include "kernels/attention_cuda.h"
#include "kernels/cuda_check.h"
#include "kernels/dequant.h"
#include "kernels/dequant_cuda.h"
#include "kernels/embedding.h"
#include "kernels/gemm_cuda.h"
#include "kernels/half.h"
#include "kernels/matmul.h"
#include "kernels/rmsnorm.h"
#include "kernels/rmsnorm_cuda.h"
#include "kernels/rope.h"
#include "kernels/rope_cuda.h"
#include "kernels/sampling.h"
#include "kernels/sampling_cuda.h"
#include "kernels/softmax.h"
#include "kernels/softmax_cuda.h"
#include "kernels/swiglu.h"
#include "kernels/swiglu_cuda.h"

namespace dsi::kernels {
namespace {

bool g_perf = false;
int g_iters = 50;

// Thresholds on nmse. FP32 kernels differ from the CPU only in summation order and in float
// vs double accumulators: relative error ~1e-6 per element, nmse ~1e-12; 1e-9 leaves room for
// long rows. Dequantisation to float uses the same formulas; only nvcc's FMA contraction of
// Q4_1's q*d + m can move the last bit (nmse ~1e-15), hence 1e-12. To half it adds one
// rounding (2^-11 relative, nmse ~1e-7). GEMMs are compared with the CPU GEMM on the same
// (rounded) inputs: FP32 differs only in summation order; FP16/BF16 products are exact in
// FP32 but tensor-core accumulation may truncate (up to ~K * 2^-23 relative in the worst case).
constexpr double kFp32Tol = 1e-9;
constexpr double kExactTol = 1e-12;
constexpr double kHalfOutTol = 1e-6;
constexpr double kGemmF32Tol = 1e-8;
constexpr double kGemmHalfTol = 1e-6;
// probs_from_logits: both sides compute exp in (effectively) correctly rounded float, sum in
// double and divide in double, so equal supports give values within an ulp or two (relative
// ~2.4e-7, nmse <~ 1e-13); the threshold of 1e-10 is far below what a wrongly cut or wrongly
// renormalised row gives (an index more or less moves the whole row by its mass, nmse ~1e-6
// even for a 1e-3 element). Support equality is checked separately.
constexpr double kProbsTol = 1e-10;

double nmse(const std::vector<float>& gpu, const std::vector<float>& cpu) {
  EXPECT_EQ(gpu.size(), cpu.size());
  double num = 0, den = 0;
  for (size_t i = 0; i < cpu.size(); ++i) {
    const double d = static_cast<double>(gpu[i]) - cpu[i];
    num += d * d;
    den += static_cast<double>(cpu[i]) * cpu[i];
  }
  return den > 0 ? num / den : num;
}

std::vector<float> randn(size_t n, std::mt19937& rng, float scale = 1.0f) {
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

// Device copy of a host vector; freed on scope exit.
template <typename T>
class DevBuf {
 public:
  explicit DevBuf(const std::vector<T>& h) : n_(h.size()) {
    CUDA_CHECK(cudaMalloc(&p_, std::max<size_t>(1, n_) * sizeof(T)));
    if (n_ > 0) CUDA_CHECK(cudaMemcpy(p_, h.data(), n_ * sizeof(T), cudaMemcpyHostToDevice));
  }
  explicit DevBuf(size_t n) : DevBuf(std::vector<T>(n)) {}
  ~DevBuf() { cudaFree(p_); }
  DevBuf(const DevBuf&) = delete;
  DevBuf& operator=(const DevBuf&) = delete;
  T* get() const { return p_; }
  std::vector<T> host() const {
    std::vector<T> h(n_);
    if (n_ > 0) CUDA_CHECK(cudaMemcpy(h.data(), p_, n_ * sizeof(T), cudaMemcpyDeviceToHost));
    return h;
  }

 private:
  T* p_ = nullptr;
  size_t n_;
};

// What a case hands to the harness: its launch (enqueued on the stream) and, for the perf
// table, the bytes it must move at least (for GB/s) and its flops.
struct Launch {
  std::function<void(cudaStream_t)> run;
  double bytes = 0;
  double flops = 0;
};

struct Harness {
  cudaStream_t stream = nullptr;
  // Runs the launch once and waits, checking for launch and execution errors.
  void once(const Launch& l) {
    l.run(stream);
    CUDA_CHECK(cudaGetLastError());
    CUDA_CHECK(cudaStreamSynchronize(stream));
  }
  // Median time of g_iters launches in ms (after the correctness run, so in-place kernels
  // may scramble their buffers freely).
  void time(const std::string& name, const Launch& l) {
    if (!g_perf) return;
    cudaEvent_t a, b;
    CUDA_CHECK(cudaEventCreate(&a));
    CUDA_CHECK(cudaEventCreate(&b));
    for (int i = 0; i < 3; ++i) l.run(stream);
    std::vector<float> ms;
    for (int i = 0; i < g_iters; ++i) {
      CUDA_CHECK(cudaEventRecord(a, stream));
      l.run(stream);
      CUDA_CHECK(cudaEventRecord(b, stream));
      CUDA_CHECK(cudaEventSynchronize(b));
      float t = 0;
      CUDA_CHECK(cudaEventElapsedTime(&t, a, b));
      ms.push_back(t);
    }
    CUDA_CHECK(cudaEventDestroy(a));
    CUDA_CHECK(cudaEventDestroy(b));
    std::sort(ms.begin(), ms.end());
    const double med = ms[ms.size() / 2];
    std::printf("[ PERF ] %-44s %9.4f ms %9.1f GB/s %9.1f GFLOP/s\n", name.c_str(), med,
                l.bytes / (med * 1e6), l.flops / (med * 1e6));
  }
};

struct Case {
  std::string name;
  double tol;
  // Builds inputs from the rng, runs CPU and GPU (through the harness), returns the nmse.
  std::function<double(std::mt19937&, Harness&, const std::string&)> run;
};

// Names the case in gtest's and ctest's listings instead of dumping its bytes.
void PrintTo(const Case& c, std::ostream* os) {
  *os << c.name;
}

Case rmsnorm_case(int n, int dim) {
  return {"rmsnorm_n" + std::to_string(n) + "_d" + std::to_string(dim), kFp32Tol,
          [=](std::mt19937& rng, Harness& h, const std::string& name) {
            auto x = randn(size_t(n) * dim, rng, 3.0f), w = randn(dim, rng);
            std::vector<float> ref(x.size());
            rmsnorm_cpu(ref.data(), x.data(), w.data(), n, dim, 1e-5f);
            DevBuf<float> dx(x), dw(w), dy(x.size());
            Launch l{[&](cudaStream_t s) {
                       rmsnorm_cuda(dy.get(), dx.get(), dw.get(), n, dim, 1e-5f, s);
                     },
                     8.0 * x.size(), 3.0 * x.size()};
            h.once(l);
            const double e = nmse(dy.host(), ref);
            h.time(name, l);
            return e;
          }};
}

Case rope_case(int n, int heads, int head_dim, int rot_dim, RopeLayout layout, int pos0) {
  return {std::string("rope_") + (layout == RopeLayout::kAdjacentPairs ? "adj" : "half") + "_n" +
              std::to_string(n) + "_h" + std::to_string(heads) + "_hd" + std::to_string(head_dim) +
              "_rot" + std::to_string(rot_dim) + "_p" + std::to_string(pos0),
          kFp32Tol, [=](std::mt19937& rng, Harness& h, const std::string& name) {
            auto x = randn(size_t(n) * heads * head_dim, rng);
            std::vector<int32_t> pos(n);
            for (int i = 0; i < n; ++i) pos[i] = pos0 + i;
            DevBuf<float> dx(x);
            DevBuf<int32_t> dpos(pos);
            rope_cpu(x.data(), pos.data(), n, heads, head_dim, rot_dim, 10000.0f, layout);
            Launch l{[&](cudaStream_t s) {
                       rope_cuda(dx.get(), dpos.get(), n, heads, head_dim, rot_dim, 10000.0f,
                                 layout, s);
                     },
                     8.0 * x.size(), 6.0 * x.size()};
            h.once(l);
            const double e = nmse(dx.host(), x);
            h.time(name, l);
            return e;
          }};
}

Case swiglu_case(int64_t n) {
  return {"swiglu_n" + std::to_string(n), kFp32Tol,
          [=](std::mt19937& rng, Harness& h, const std::string& name) {
            auto g = randn(n, rng, 2.0f), u = randn(n, rng);
            std::vector<float> ref(n);
            swiglu_cpu(ref.data(), g.data(), u.data(), n);
            DevBuf<float> dg(g), du(u), dy(n);
            Launch l{[&](cudaStream_t s) { swiglu_cuda(dy.get(), dg.get(), du.get(), n, s); },
                     12.0 * n, 5.0 * n};
            h.once(l);
            const double e = nmse(dy.host(), ref);
            h.time(name, l);
            return e;
          }};
}

// argmax must be bit-exact, not close: the GPU's greedy token is the CPU's (kernels/argmax.h).
// The "nmse" of these cases is the number of rows whose index differs (tolerance 0). Kinds:
//   random  normal logits (distinct values)
//   ties    logits on a coarse grid, so the maximum repeats across threads; its lowest
//           occurrence is often in a higher-numbered thread than a later one
//   edges   hand-made rows: max at 255 and 256 (thread 255 vs thread 0), all equal, -0 then +0,
//           all -inf, -inf at 0 then finite, NaN at 0 (the CPU keeps 0), NaNs elsewhere, all
//           NaN, a single maximum at the last index, +inf twice
Case argmax_case(int n, int vocab, const std::string& kind) {
  return {"argmax_" + kind + "_n" + std::to_string(n) + "_v" + std::to_string(vocab), 0.0,
          [=](std::mt19937& rng, Harness& h, const std::string& name) {
            std::vector<float> x = randn(size_t(n) * vocab, rng, 3.0f);
            const float inf = std::numeric_limits<float>::infinity();
            const float nan = std::numeric_limits<float>::quiet_NaN();
            if (kind == "ties") {
              for (auto& v : x) v = std::round(v * 0.5f);  // few distinct values
            } else if (kind == "edges") {
              for (int r = 0; r < n; ++r) {
                float* row = x.data() + size_t(r) * vocab;
                auto fill = [&](float v) { std::fill(row, row + vocab, v); };
                switch (r % 11) {
                  case 0:
                    row[255] = row[256] = 100.0f;
                    break;
                  case 1:
                    fill(1.5f);
                    break;
                  case 2:
                    fill(0.0f);
                    row[0] = -0.0f;
                    break;
                  case 3:
                    fill(-inf);
                    break;
                  case 4:
                    row[0] = -inf;
                    break;
                  case 5:
                    row[0] = nan;
                    row[7] = 100.0f;
                    break;
                  case 6:
                    for (int i = 1; i < vocab; i += 3) row[i] = nan;
                    break;
                  case 7:
                    fill(nan);
                    break;
                  case 8:
                    row[vocab - 1] = 100.0f;
                    break;
                  case 9:
                    row[vocab / 2] = row[vocab - 2] = inf;
                    break;
                  case 10:
                    fill(-inf);
                    row[vocab - 1] = nan;
                    row[vocab / 3] = -1e30f;
                    break;
                }
              }
            }
            std::vector<int32_t> want(n);
            argmax_cpu(want.data(), x.data(), n, vocab);
            DevBuf<float> dx(x);
            DevBuf<int32_t> dout(static_cast<size_t>(n));
            Launch l{[&](cudaStream_t s) { argmax_cuda(dout.get(), dx.get(), n, vocab, s); },
                     4.0 * x.size(), 1.0 * x.size()};
            h.once(l);
            const std::vector<int32_t> got = dout.host();
            int mismatches = 0;
            for (int r = 0; r < n; ++r) {
              if (got[r] != want[r]) {
                ++mismatches;
                ADD_FAILURE() << name << ": row " << r << ": gpu " << got[r] << ", cpu " << want[r];
              }
            }
            h.time(name, l);
            return double(mismatches);
          }};
}

Case softmax_case(int n, int dim, bool with_neg_inf) {
  return {"softmax_n" + std::to_string(n) + "_d" + std::to_string(dim) +
              (with_neg_inf ? "_neginf" : ""),
          kFp32Tol, [=](std::mt19937& rng, Harness& h, const std::string& name) {
            auto x = randn(size_t(n) * dim, rng, 4.0f);
            if (with_neg_inf) {
              for (size_t i = 0; i < x.size(); i += 3) x[i] = -INFINITY;
            }
            DevBuf<float> dx(x);
            softmax_cpu(x.data(), n, dim);
            Launch l{[&](cudaStream_t s) { softmax_cuda(dx.get(), n, dim, s); }, 8.0 * x.size(),
                     4.0 * x.size()};
            h.once(l);
            const double e = nmse(dx.host(), x);
            h.time(name, l);
            return e;
          }};
}

// Random GGUF bytes of `type` for n elements: random codes with sane half scales.
std::vector<uint8_t> random_tensor(GgmlType type, int64_t n, std::mt19937& rng) {
  std::vector<uint8_t> bytes(ggml_row_size(type, n));
  std::uniform_int_distribution<int> byte(0, 255);
  for (auto& b : bytes) b = static_cast<uint8_t>(byte(rng));
  std::normal_distribution<float> d(0.0f, 0.05f);
  auto put16 = [&](size_t off, uint16_t v) { std::memcpy(&bytes[off], &v, 2); };
  switch (type) {
    case GgmlType::F32:
      for (int64_t i = 0; i < n; ++i) {
        const float f = d(rng);
        std::memcpy(&bytes[4 * i], &f, 4);
      }
      break;
    case GgmlType::F16:
      for (int64_t i = 0; i < n; ++i) put16(2 * i, fp32_to_fp16(d(rng)));
      break;
    case GgmlType::BF16:
      for (int64_t i = 0; i < n; ++i) put16(2 * i, fp32_to_bf16(d(rng)));
      break;
    default: {
      // Where each block keeps its half scale d and, for the types with one, its min (m or
      // dmin); everything else stays random codes and packed sub-block scales.
      size_t d_at = 0, m_at = SIZE_MAX;
      if (type == GgmlType::Q4_1 || type == GgmlType::Q5_1 || type == GgmlType::Q4_K ||
          type == GgmlType::Q5_K) {
        m_at = 2;
      } else if (type == GgmlType::Q2_K) {
        d_at = 80;
        m_at = 82;
      } else if (type == GgmlType::Q3_K) {
        d_at = 108;
      } else if (type == GgmlType::Q6_K) {
        d_at = 208;
      }
      const size_t bs = ggml_type_size(type);
      for (size_t off = 0; off < bytes.size(); off += bs) {
        put16(off + d_at, fp32_to_fp16(std::abs(d(rng)) / 8));
        if (m_at != SIZE_MAX) put16(off + m_at, fp32_to_fp16(d(rng)));
      }
    }
  }
  return bytes;
}

Case dequant_case(GgmlType type, int64_t n, bool to_half) {
  return {std::string("dequant_") + ggml_type_name(type) + (to_half ? "_to_f16" : "_to_f32") +
              "_n" + std::to_string(n),
          to_half ? kHalfOutTol : kExactTol,
          [=](std::mt19937& rng, Harness& h, const std::string& name) {
            const auto src = random_tensor(type, n, rng);
            std::vector<float> ref(n);
            dequantize_row(type, src.data(), ref.data(), n);
            // Only the element's alignment (2 bytes for blocks and halves, 4 for F32), as a
            // row inside a tensor may have.
            const size_t off = type == GgmlType::F32 ? 4 : 2;
            std::vector<uint8_t> padded(src.size() + off);
            std::memcpy(padded.data() + off, src.data(), src.size());
            DevBuf<uint8_t> dsrc(padded);
            const void* p = dsrc.get() + off;
            std::vector<float> got(n);
            Launch l;
            l.bytes = src.size() + n * (to_half ? 2.0 : 4.0);
            if (to_half) {
              DevBuf<uint16_t> dy(n);
              l.run = [&](cudaStream_t s) { dequantize_f16_cuda(type, p, dy.get(), n, s); };
              h.once(l);
              const auto bits = dy.host();
              for (int64_t i = 0; i < n; ++i) got[i] = fp16_to_fp32(bits[i]);
              h.time(name, l);
            } else {
              DevBuf<float> dy(n);
              l.run = [&](cudaStream_t s) { dequantize_cuda(type, p, dy.get(), n, s); };
              h.once(l);
              got = dy.host();
              h.time(name, l);
            }
            return nmse(got, ref);
          }};
}

// The CPU side dequantizes the table and runs embedding_cpu, so this checks the gather.
Case embedding_case(GgmlType type, int vocab, int dim, int n) {
  return {std::string("embedding_") + ggml_type_name(type) + "_v" + std::to_string(vocab) + "_d" +
              std::to_string(dim) + "_n" + std::to_string(n),
          kExactTol, [=](std::mt19937& rng, Harness& h, const std::string& name) {
            const auto table = random_tensor(type, int64_t{vocab} * dim, rng);
            std::vector<float> table_f(size_t(vocab) * dim);
            dequantize_row(type, table.data(), table_f.data(), int64_t{vocab} * dim);
            std::vector<int32_t> tokens(n);
            std::uniform_int_distribution<int32_t> id(0, vocab - 1);
            for (auto& t : tokens) t = id(rng);
            tokens[0] = vocab - 1;
            std::vector<float> ref(size_t(n) * dim);
            embedding_cpu(ref.data(), table_f.data(), tokens.data(), n, dim);
            DevBuf<uint8_t> dt(table);
            DevBuf<int32_t> dtok(tokens);
            DevBuf<float> dy(ref.size());
            Launch l{[&](cudaStream_t s) {
                       embedding_cuda(dy.get(), type, dt.get(), dtok.get(), n, dim, s);
                     },
                     double(n) * (ggml_row_size(type, dim) + 4.0 * dim), 0};
            h.once(l);
            const double e = nmse(dy.host(), ref);
            h.time(name, l);
            return e;
          }};
}

// mask: 0 causal; 1 a random tree-like mask (each query sees the prefix and a random subset
// of the block, always itself).
Case attention_case(int n_q, int n_kv, int heads, int kv_heads, int head_dim, bool masked) {
  return {"attention_q" + std::to_string(n_q) + "_kv" + std::to_string(n_kv) + "_h" +
              std::to_string(heads) + "_kvh" + std::to_string(kv_heads) + "_hd" +
              std::to_string(head_dim) + (masked ? "_mask" : "_causal"),
          kFp32Tol, [=](std::mt19937& rng, Harness& h, const std::string& name) {
            const int kv_stride = kv_heads * head_dim;
            auto q = randn(size_t(n_q) * heads * head_dim, rng);
            auto k = randn(size_t(n_kv) * kv_stride, rng);
            auto v = randn(size_t(n_kv) * kv_stride, rng);
            const int q_pos0 = n_kv - n_q;
            std::vector<uint8_t> mask;
            if (masked) {
              mask.assign(size_t(n_q) * n_kv, 0);
              std::bernoulli_distribution coin(0.5);
              for (int i = 0; i < n_q; ++i) {
                for (int j = 0; j < n_kv; ++j) {
                  mask[size_t(i) * n_kv + j] =
                      j < q_pos0 || j == q_pos0 + i || (j < q_pos0 + i && coin(rng));
                }
              }
            }
            std::vector<float> ref(q.size());
            attention_cpu(ref.data(), q.data(), k.data(), v.data(), masked ? mask.data() : nullptr,
                          n_q, n_kv, q_pos0, heads, kv_heads, head_dim, kv_stride, 0, heads);
            DevBuf<float> dq(q), dk(k), dv(v), dy(q.size());
            DevBuf<uint8_t> dm(mask);
            const uint8_t* mp = masked ? dm.get() : nullptr;
            Launch l{[&](cudaStream_t s) {
                       attention_cuda(dy.get(), dq.get(), dk.get(), dv.get(), mp, n_q, n_kv, q_pos0,
                                      heads, kv_heads, head_dim, kv_stride, 0, heads, s);
                     },
                     4.0 * (2.0 * k.size() + 2.0 * q.size()),
                     4.0 * n_q * double(n_kv) * heads * head_dim};
            h.once(l);
            const double e = nmse(dy.host(), ref);
            h.time(name, l);
            return e;
          }};
}

// invariant: gemm_invariant_cuda (its own kernel) instead of cuBLAS's gemm_cuda.
Case gemm_case(GemmType type, int n, int in, int out, bool bias, bool invariant = false) {
  static const char* kNames[] = {"f32", "f16", "bf16"};
  return {
      std::string(invariant ? "gemm_invariant_" : "gemm_") + kNames[int(type)] + "_n" +
          std::to_string(n) + "_in" + std::to_string(in) + "_out" + std::to_string(out) +
          (bias ? "_bias" : ""),
      type == GemmType::kF32 ? kGemmF32Tol : kGemmHalfTol,
      [=](std::mt19937& rng, Harness& h, const std::string& name) {
        auto x = randn(size_t(n) * in, rng), w = randn(size_t(out) * in, rng, 0.05f);
        auto b = randn(bias ? out : 0, rng);
        // Round the inputs to the GPU's element type; the CPU sees the rounded values.
        auto to_bits = [&](std::vector<float>& f) {
          std::vector<uint16_t> bits(f.size());
          for (size_t i = 0; i < f.size(); ++i) {
            bits[i] = type == GemmType::kF16 ? fp32_to_fp16(f[i]) : fp32_to_bf16(f[i]);
            f[i] = type == GemmType::kF16 ? fp16_to_fp32(bits[i]) : bf16_to_fp32(bits[i]);
          }
          return bits;
        };
        std::vector<uint16_t> xb, wb;
        if (type != GemmType::kF32) {
          xb = to_bits(x);
          wb = to_bits(w);
        }
        std::vector<float> ref(size_t(n) * out);
        matmul_cpu(ref.data(), x.data(), w.data(), bias ? b.data() : nullptr, n, in, out);
        DevBuf<float> dxf(type == GemmType::kF32 ? x : std::vector<float>());
        DevBuf<float> dwf(type == GemmType::kF32 ? w : std::vector<float>());
        DevBuf<uint16_t> dxh(xb), dwh(wb);
        DevBuf<float> db(b), dy(ref.size());
        const void* px = type == GemmType::kF32 ? static_cast<const void*>(dxf.get()) : dxh.get();
        const void* pw = type == GemmType::kF32 ? static_cast<const void*>(dwf.get()) : dwh.get();
        std::optional<CublasHandle> handle;
        if (!invariant) handle.emplace();
        const double elt = type == GemmType::kF32 ? 4 : 2;
        Launch l{[&](cudaStream_t s) {
                   const float* pb = bias ? db.get() : nullptr;
                   if (invariant) {
                     gemm_invariant_cuda(dy.get(), px, pw, pb, type, n, in, out, s);
                   } else {
                     gemm_cuda(*handle, dy.get(), px, pw, pb, type, n, in, out, s);
                   }
                 },
                 elt * (double(out) * in + double(n) * in) + 4.0 * n * out,
                 2.0 * n * double(in) * out};
        h.once(l);
        const double e = nmse(dy.host(), ref);
        h.time(name, l);
        return e;
      }};
}

// FP32 -> FP16/BF16 activations for the GEMM: both sides round to nearest even, so the bits
// must agree exactly (compared as floats; kExactTol).
Case convert_case(GemmType type, int64_t n) {
  return {std::string("convert_f32_to_") + (type == GemmType::kF16 ? "f16" : "bf16") + "_n" +
              std::to_string(n),
          kExactTol, [=](std::mt19937& rng, Harness& h, const std::string& name) {
            auto x = randn(n, rng, 3.0f);
            std::vector<float> ref(n);
            for (int64_t i = 0; i < n; ++i) {
              ref[i] = type == GemmType::kF16 ? fp16_to_fp32(fp32_to_fp16(x[i]))
                                              : bf16_to_fp32(fp32_to_bf16(x[i]));
            }
            DevBuf<float> dx(x);
            DevBuf<uint16_t> dy(n);
            Launch l{[&](cudaStream_t s) { convert_f32_cuda(dy.get(), type, dx.get(), n, s); },
                     6.0 * n, 0};
            h.once(l);
            const auto bits = dy.host();
            std::vector<float> got(n);
            for (int64_t i = 0; i < n; ++i) {
              got[i] = type == GemmType::kF16 ? fp16_to_fp32(bits[i]) : bf16_to_fp32(bits[i]);
            }
            h.time(name, l);
            return nmse(got, ref);
          }};
}

// Names may only hold [A-Za-z0-9_]: 0.9 -> "0p9".
std::string num_name(float x) {
  std::string s = std::to_string(x);
  s.erase(s.find_last_not_of('0') + 1);
  if (s.back() == '.') s.pop_back();
  for (auto& ch : s) ch = ch == '.' ? 'p' : ch;
  return s;
}

// probs_from_logits on `rows` rows. Besides the nmse, the support (non-zero indices) of every
// row must equal the CPU's. An index may differ only when the CPU could have cut it either way
// within rounding: its uncut probability within 8 ulp (1e-6 relative) of the smallest kept one
// (a near-tie that the GPU's last-bit differences may order the other way), or the mass of the
// probabilities above it, or of those >= it, within 1e-6 of top_p (the cumulative mass reaches
// top_p right before or at it; 1e-6 covers the per-element ulp differences summed over the kept
// set). Such rows are counted, printed and left out of the nmse (their
// renormalisation differs legitimately). `ties` rounds the logits to multiples of 0.5, so that
// exact ties straddle the cuts: the lower index must be kept, and no excuse is allowed.
Case sampling_probs_case(int rows, int vocab, float temperature, int top_k, float top_p,
                         bool ties) {
  return {
      "sampling_probs_r" + std::to_string(rows) + "_v" + std::to_string(vocab) + "_T" +
          num_name(temperature) + "_k" + std::to_string(top_k) + "_p" + num_name(top_p) +
          (ties ? "_ties" : ""),
      kProbsTol, [=](std::mt19937& rng, Harness& h, const std::string& name) {
        auto logits = randn(size_t(rows) * vocab, rng, 3.0f);
        if (ties) {
          for (auto& x : logits) x = std::round(x * 2) / 2;
        }
        std::vector<float> ref(logits.size()), full(vocab);
        for (int r = 0; r < rows; ++r) {
          probs_from_logits_cpu(ref.data() + size_t(r) * vocab, logits.data() + size_t(r) * vocab,
                                vocab, temperature, top_k, top_p);
        }
        DevBuf<float> dl(logits), dp(logits.size());
        Launch l{[&](cudaStream_t s) {
                   probs_from_logits_cuda(dp.get(), dl.get(), rows, vocab, temperature, top_k,
                                          top_p, s);
                 },
                 8.0 * logits.size(), 0};
        h.once(l);
        const auto got = dp.host();
        std::vector<float> got_exact, ref_exact;
        int excused = 0;
        for (int r = 0; r < rows; ++r) {
          const size_t o = size_t(r) * vocab;
          std::vector<int> diff;
          for (int i = 0; i < vocab; ++i) {
            if ((got[o + i] > 0) != (ref[o + i] > 0)) diff.push_back(i);
          }
          if (diff.empty()) {
            got_exact.insert(got_exact.end(), got.begin() + o, got.begin() + o + vocab);
            ref_exact.insert(ref_exact.end(), ref.begin() + o, ref.begin() + o + vocab);
            continue;
          }
          if (ties) {
            ADD_FAILURE() << name << " row " << r << ": support differs at index " << diff[0]
                          << " (cpu " << ref[o + diff[0]] << ", gpu " << got[o + diff[0]] << ")";
            continue;
          }
          probs_from_logits_cpu(full.data(), logits.data() + o, vocab, temperature, 0, 1.0f);
          float smallest_kept = INFINITY;
          for (int i = 0; i < vocab; ++i) {
            if (ref[o + i] > 0) smallest_kept = std::min(smallest_kept, full[i]);
          }
          for (int i : diff) {
            // Mass of the probabilities above i, and with i: the CPU's cumulative mass just
            // before and at i (up to the order within exact ties).
            double above = 0, mass = 0;
            for (int j = 0; j < vocab; ++j) {
              if (full[j] > full[i]) above += full[j];
              if (full[j] >= full[i]) mass += full[j];
            }
            const bool near_tie = std::abs(full[i] - smallest_kept) <= 1e-6 * smallest_kept;
            const bool near_p =
                top_p < 1.0f && (std::abs(mass - top_p) <= 1e-6 || std::abs(above - top_p) <= 1e-6);
            EXPECT_TRUE(near_tie || near_p)
                << name << " row " << r << ": support differs at index " << i << " (cpu "
                << ref[o + i] << ", gpu " << got[o + i] << ", uncut " << full[i]
                << ", smallest kept " << smallest_kept << ", mass >= it " << mass << ")";
          }
          ++excused;
        }
        if (excused > 0) {
          std::printf("[ INFO ] %s: %d of %d rows differ in support within rounding of the "
                      "cut (left out of the nmse)\n",
                      name.c_str(), excused, rows);
        }
        h.time(name, l);
        return ref_exact.empty() ? 0.0 : nmse(got_exact, ref_exact);
      }};
}

// sample_cdf against the CPU for `draws` values of u (uniform, plus 0 and every exact CDF
// boundary of the first few positive weights, which must be skipped). Weights: the
// probabilities of random logits cut by top_p (zeros included), or, with `raw`, unnormalised
// uniform weights of which about a third are zero. Draws must all be equal, except those whose
// u * total lies within 1e-9 * total of a cumulative boundary, where summation order may
// legitimately decide; those are skipped and counted. Returns the number of mismatches.
Case sampling_cdf_case(int vocab, int draws, bool raw) {
  return {
      "sampling_cdf_v" + std::to_string(vocab) + "_n" + std::to_string(draws) +
          (raw ? "_raw" : "_probs"),
      0.0, [=](std::mt19937& rng, Harness& h, const std::string& name) {
        std::vector<float> w(vocab);
        if (raw) {
          std::uniform_real_distribution<float> d(0.0f, 5.0f);
          std::bernoulli_distribution zero(1.0 / 3);
          for (auto& x : w) x = zero(rng) ? 0.0f : d(rng);
        } else {
          const auto logits = randn(vocab, rng, 3.0f);
          probs_from_logits_cpu(w.data(), logits.data(), vocab, 1.0f, 0, 0.9f);
        }
        // The CPU's cumulative sums, for the boundary test.
        double total = 0;
        for (float x : w) total += x;
        std::vector<double> acc(vocab, 0.0);
        double a = 0;
        for (int i = 0; i < vocab; ++i) {
          if (w[i] > 0) a += w[i];
          acc[i] = a;
        }
        std::vector<double> us{0.0};
        int n_boundaries = 0;
        for (int i = 0; i < vocab && n_boundaries < 8; ++i) {
          if (w[i] > 0) {
            us.push_back(acc[i] / total);
            ++n_boundaries;
          }
        }
        std::uniform_real_distribution<double> ud(0.0, 1.0);
        while (int(us.size()) < draws) us.push_back(ud(rng));
        DevBuf<float> dw(w);
        DevBuf<int32_t> dout(us.size());
        h.once({[&](cudaStream_t s) {
          for (size_t d = 0; d < us.size(); ++d) {
            sample_cdf_cuda(dout.get() + d, dw.get(), vocab, us[d], s);
          }
        }});
        const auto got = dout.host();
        int skipped = 0, mismatches = 0;
        for (size_t d = 0; d < us.size(); ++d) {
          const int32_t want = sample_cdf_cpu(w.data(), vocab, us[d]);
          const double target = us[d] * total;
          // The boundaries around the CPU's draw: its own cumulative weight and the one
          // before it (none before the first positive weight: 0 is exact on both sides).
          bool near = std::abs(acc[want] - target) <= 1e-9 * total;
          int prev = want - 1;
          while (prev >= 0 && !(w[prev] > 0)) --prev;
          if (prev >= 0) near = near || std::abs(acc[prev] - target) <= 1e-9 * total;
          if (near) {
            ++skipped;
            continue;
          }
          if (got[d] != want) {
            ++mismatches;
            ADD_FAILURE() << name << ": u " << us[d] << ": gpu drew " << got[d] << ", cpu " << want;
          }
        }
        std::printf("[ INFO ] %s: %zu draws, %d skipped within 1e-9 of a CDF boundary\n",
                    name.c_str(), us.size(), skipped);
        EXPECT_GE(skipped, n_boundaries) << "the exact boundaries put into u must be skipped";
        const double u0 = 0.5;
        h.time(name, {[&](cudaStream_t s) { sample_cdf_cuda(dout.get(), dw.get(), vocab, u0, s); },
                      4.0 * vocab, 2.0 * vocab});
        return double(mismatches);
      }};
}

std::vector<Case> all_cases() {
  std::vector<Case> c;
  for (auto [n, d] : {std::pair{1, 64}, {3, 2048}, {17, 4096}, {2, 5000}})
    c.push_back(rmsnorm_case(n, d));
  for (auto layout : {RopeLayout::kAdjacentPairs, RopeLayout::kHalfSplit}) {
    c.push_back(rope_case(1, 8, 64, 64, layout, 0));
    c.push_back(rope_case(7, 32, 128, 128, layout, 8000));
    c.push_back(rope_case(5, 4, 64, 32, layout, 100));  // partial rotary
  }
  for (int64_t n : {int64_t{1}, int64_t{1000}, int64_t{5632} * 9}) c.push_back(swiglu_case(n));
  for (auto [n, d] : {std::pair{1, 10}, {4, 32000}, {9, 1000}}) {
    c.push_back(softmax_case(n, d, false));
  }
  c.push_back(softmax_case(3, 777, true));
  c.push_back(argmax_case(1, 10, "random"));
  c.push_back(argmax_case(8, 32000, "random"));
  c.push_back(argmax_case(3, 151936, "random"));
  c.push_back(argmax_case(16, 32000, "ties"));
  c.push_back(argmax_case(5, 300, "ties"));
  c.push_back(argmax_case(22, 1000, "edges"));
  c.push_back(argmax_case(11, 257, "edges"));
  for (auto t : {GgmlType::F32, GgmlType::F16, GgmlType::BF16, GgmlType::Q8_0, GgmlType::Q4_0,
                 GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::Q2_K, GgmlType::Q3_K,
                 GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K}) {
    c.push_back(dequant_case(t, ggml_block_size(t) == 256 ? 256 * 7 : 32 * 7, false));
    c.push_back(dequant_case(t, 2048 * 512, false));
    c.push_back(dequant_case(t, 2048 * 64, true));
  }
  for (auto t : {GgmlType::F32, GgmlType::F16, GgmlType::Q8_0, GgmlType::Q4_1, GgmlType::Q5_0,
                 GgmlType::Q4_K, GgmlType::Q6_K}) {
    c.push_back(embedding_case(t, 1000, 256, 9));
  }
  c.push_back(embedding_case(GgmlType::Q4_0, 32000, 4096, 64));
  c.push_back(attention_case(1, 1, 4, 4, 64, false));
  c.push_back(attention_case(1, 300, 32, 4, 64, false));   // decode, GQA 8:1
  c.push_back(attention_case(6, 517, 32, 8, 128, false));  // verify of 6 tokens
  c.push_back(attention_case(6, 517, 32, 8, 128, true));   // tree mask
  c.push_back(attention_case(16, 4096, 8, 8, 64, false));
  c.push_back(attention_case(2, 20000, 4, 1, 64, false));  // needs > 48 KiB shared memory
  c.push_back(convert_case(GemmType::kF16, 2048 * 7));
  c.push_back(convert_case(GemmType::kBF16, 2048 * 7));
  for (auto t : {GemmType::kF32, GemmType::kF16, GemmType::kBF16}) {
    c.push_back(gemm_case(t, 1, 256, 96, false));
    c.push_back(gemm_case(t, 7, 2048, 5632, true));
    c.push_back(gemm_case(t, 64, 1024, 1000, false));
    c.push_back(gemm_case(t, 1, 2048, 5632, false, true));
    c.push_back(gemm_case(t, 7, 2048, 5632, true, true));
    c.push_back(gemm_case(t, 64, 1024, 1000, false, true));
    c.push_back(gemm_case(t, 3, 100, 50, true, true));  // in not a multiple of 16 bytes
  }
  for (auto [k, p] : {std::pair{5, 1.0f}, {0, 0.5f}, {3, 0.9f}, {40, 0.9f}}) {
    c.push_back(sampling_probs_case(8, 32, 1.0f, k, p, true));
  }
  struct Cut {
    float t;
    int k;
    float p;
  };
  for (int vocab : {32, 1000, 32000, 151936}) {
    for (auto [t, k, p] :
         {Cut{1.0f, 0, 1.0f}, Cut{0.5f, 40, 1.0f}, Cut{1.5f, 0, 0.9f}, Cut{1.0f, 40, 0.9f},
          Cut{1.0f, 1, 1.0f}, Cut{0.5f, 0, 0.5f}, Cut{1.5f, 1, 0.5f}}) {
      for (int rows : {1, 8}) c.push_back(sampling_probs_case(rows, vocab, t, k, p, false));
    }
  }
  for (int vocab : {32, 1000, 151936}) {
    c.push_back(sampling_cdf_case(vocab, vocab > 1000 ? 300 : 1000, false));
    c.push_back(sampling_cdf_case(vocab, vocab > 1000 ? 300 : 1000, true));
  }
  // Decode and verify shapes of a 7B model, for the --perf table (checked all the same).
  c.push_back(rmsnorm_case(1, 4096));
  c.push_back(dequant_case(GgmlType::Q4_0, int64_t{4096} * 11008, false));
  c.push_back(dequant_case(GgmlType::Q8_0, int64_t{4096} * 11008, true));
  c.push_back(attention_case(1, 4096, 32, 8, 128, false));
  c.push_back(attention_case(8, 4096, 32, 8, 128, true));
  c.push_back(gemm_case(GemmType::kF16, 1, 4096, 11008, false));
  c.push_back(gemm_case(GemmType::kBF16, 8, 4096, 4096, false));
  c.push_back(gemm_case(GemmType::kF16, 512, 4096, 4096, false));
  return c;
}

int device_count();

// gemm_invariant_cuda gives each row the same bits whatever rows share its call: all 13
// rows at once, each alone, and blocks of 2, 5 and 8 from every offset (the tile sizes of the
// kernel, and tiles that straddle). For the vector path (in a multiple of 16 bytes) and the
// scalar one, every element type, with a bias.
void expect_rows_invariant(GemmType type, int in) {
  const int n = 13, out = 300;
  const size_t elt = type == GemmType::kF32 ? 4 : 2;
  std::mt19937 rng(7);
  std::vector<float> x = randn(size_t(n) * in, rng), w = randn(size_t(out) * in, rng, 0.05f),
                     b = randn(out, rng);
  auto bytes_of = [&](const std::vector<float>& f) {
    std::vector<uint8_t> v(f.size() * elt);
    for (size_t i = 0; i < f.size(); ++i) {
      if (type == GemmType::kF32) {
        std::memcpy(&v[i * 4], &f[i], 4);
      } else {
        const uint16_t h = type == GemmType::kF16 ? fp32_to_fp16(f[i]) : fp32_to_bf16(f[i]);
        std::memcpy(&v[i * 2], &h, 2);
      }
    }
    return v;
  };
  DevBuf<uint8_t> dx(bytes_of(x)), dw(bytes_of(w));
  DevBuf<float> db(b), dall(size_t(n) * out), dpart(size_t(n) * out);
  gemm_invariant_cuda(dall.get(), dx.get(), dw.get(), db.get(), type, n, in, out, nullptr);
  CUDA_CHECK(cudaDeviceSynchronize());
  const std::vector<float> all = dall.host();
  for (int block : {1, 2, 5, 8}) {
    for (int at = 0; at + block <= n; ++at) {
      gemm_invariant_cuda(dpart.get(), dx.get() + size_t(at) * in * elt, dw.get(), db.get(), type,
                          block, in, out, nullptr);
      CUDA_CHECK(cudaDeviceSynchronize());
      const std::vector<float> part = dpart.host();
      ASSERT_EQ(
          std::memcmp(part.data(), all.data() + size_t(at) * out, sizeof(float) * block * out), 0)
          << "type " << int(type) << " in " << in << ": rows " << at << ".." << at + block - 1
          << " alone differ from the same rows among " << n;
    }
  }
}

TEST(GemmInvariant, RowsHaveTheSameBitsAloneOrInABatch) {
  if (device_count() == 0) GTEST_SKIP() << "no CUDA device (cudaGetDeviceCount): GPU test not run";
  for (auto t : {GemmType::kF32, GemmType::kF16, GemmType::kBF16}) {
    for (int in : {2048, 100, 36}) expect_rows_invariant(t, in);
  }
}

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return n;
}

class KernelParity : public ::testing::TestWithParam<Case> {};

TEST_P(KernelParity, GpuMatchesCpu) {
  if (device_count() == 0) GTEST_SKIP() << "no CUDA device (cudaGetDeviceCount): GPU test not run";
  const Case& c = GetParam();
  std::mt19937 rng(std::hash<std::string>{}(c.name) & 0xffffffffu);
  Harness h;
  CUDA_CHECK(cudaStreamCreate(&h.stream));
  double e = 0;
  try {
    e = c.run(rng, h, c.name);
  } catch (...) {
    cudaStreamDestroy(h.stream);
    throw;
  }
  CUDA_CHECK(cudaStreamDestroy(h.stream));
  RecordProperty("nmse", std::to_string(e));
  EXPECT_LE(e, c.tol) << c.name << ": nmse " << e << " above " << c.tol;
  if (g_perf) std::printf("[ NMSE ] %-44s %.3g (tol %.1g)\n", c.name.c_str(), e, c.tol);
}

INSTANTIATE_TEST_SUITE_P(All, KernelParity, ::testing::ValuesIn(all_cases()),
                         [](const ::testing::TestParamInfo<Case>& i) { return i.param.name; });

}  // namespace
}  // namespace dsi::kernels

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--perf") == 0) dsi::kernels::g_perf = true;
    if (std::strcmp(argv[i], "--iters") == 0 && i + 1 < argc) {
      dsi::kernels::g_iters = std::max(1, std::atoi(argv[++i]));
    }
  }
  return RUN_ALL_TESTS();
}
