// Dense layers over weights in their GGUF types (kernels/qmatmul.h): the portable variant, the
// choice of variant, and the tiling and threading every variant shares.
#include "kernels/qmatmul.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#ifdef DSI_HAVE_AVX2_KERNELS
#include <cpuid.h>
#endif

#include "kernels/cpu/qmatmul_impl.h"
#include "kernels/dequant.h"

namespace dsi::kernels {
namespace detail {
namespace {

float dot8(const float* w, const float* x, int64_t n) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (int64_t i = 0; i < n; i += 8) {
    for (int l = 0; l < 8; ++l) {
      const bool in = i + l < n;
      acc[l] = std::fma(in ? w[i + l] : 0.0f, in ? x[i + l] : 0.0f, acc[l]);
    }
  }
  return hsum8(acc);
}

// The quantized arithmetic of kernels/qmatmul.h over a factored row (q, a, b).
float factored_dot(const float* q, const float* a, const float* b, QuantGroups g, const float* x,
                   const float* xs, int64_t cols) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (int64_t j = 0; j < cols / g.group; ++j) {
    const float* qj = q + j * g.group;
    const float* xj = x + j * g.group;
    float s[8];
    for (int l = 0; l < 8; ++l) s[l] = qj[l] * xj[l];
    for (int64_t c = 8; c < g.group; c += 8) {
      for (int l = 0; l < 8; ++l) s[l] = std::fma(qj[c + l], xj[c + l], s[l]);
    }
    for (int l = 0; l < 8; ++l) acc[l] = std::fma(a[j], s[l], acc[l]);
    if (g.affine) {
      for (int l = 0; l < 8; ++l) acc[l] = std::fma(b[j], xs[8 * j + l], acc[l]);
    }
  }
  return hsum8(acc);
}

// A task's rows: float rows decoded, quantized rows factored, once; then every token.
void generic_rows(const WeightMatrix& w, int64_t r0, int nr, const float* x, int n, const float* xs,
                  float* y, size_t ys, const float* bias) {
  const int64_t cols = w.cols;
  const QuantGroups g = quant_groups(w.type);
  thread_local std::vector<float> q, a, b;
  q.resize(static_cast<size_t>(nr) * cols);
  const int64_t groups = g.group ? cols / g.group : 0;
  a.resize(static_cast<size_t>(nr * groups));
  b.resize(static_cast<size_t>(nr * groups));
  for (int r = 0; r < nr; ++r) {
    if (g.group == 0) {
      dequantize_row(w.type, w.row(r0 + r), q.data() + r * cols, cols);
    } else {
      factor_row(w.type, w.row(r0 + r), cols, q.data() + r * cols, a.data() + r * groups,
                 b.data() + r * groups);
    }
  }
  for (int t = 0; t < n; ++t) {
    const float* xt = x + static_cast<size_t>(t) * cols;
    for (int r = 0; r < nr; ++r) {
      const float d = g.group == 0 ? dot8(q.data() + r * cols, xt, cols)
                                   : factored_dot(q.data() + r * cols, a.data() + r * groups,
                                                  b.data() + r * groups, g, xt,
                                                  xs ? xs + t * groups * 8 : nullptr, cols);
      y[t * ys + r] = bias != nullptr ? d + bias[r] : d;
    }
  }
}

}  // namespace

void group_sums(const float* x, int64_t cols, int64_t group, float* xs) {
  for (int64_t j = 0; j < cols / group; ++j) {
    for (int l = 0; l < 8; ++l) {
      float v = x[j * group + l];
      for (int64_t c = 8; c < group; c += 8) v += x[j * group + c + l];
      xs[8 * j + l] = v;
    }
  }
}

const QmatmulIsa kGenericIsa{generic_rows, generic_q8_rows};

}  // namespace detail

namespace {

// Rows one task computes: small enough that decoded rows stay in L2 and that a layer's
// products split into enough tasks for the pool, large enough to amortise the hand-out.
constexpr int64_t kTaskRows = 16;

const detail::QmatmulIsa& isa_impl(KernelIsa isa) {
#ifdef DSI_HAVE_AVX2_KERNELS
  if (isa == KernelIsa::kAvx2) return detail::kAvx2Isa;
#endif
  if (isa != KernelIsa::kGeneric) {
    throw std::invalid_argument(std::string("kernel variant ") + kernel_isa_name(isa) +
                                " is not built in or not supported by this CPU");
  }
  return detail::kGenericIsa;
}

KernelIsa detect_isa() {
  const char* env = std::getenv("DSI_KERNEL_ISA");
  if (env != nullptr && std::string(env) == "generic") return KernelIsa::kGeneric;
  if (env != nullptr && *env != '\0' && std::string(env) != "auto" && std::string(env) != "avx2") {
    throw std::invalid_argument(std::string("DSI_KERNEL_ISA='") + env +
                                "' is not one of auto, avx2, generic");
  }
  if (kernel_isa_supported(KernelIsa::kAvx2)) return KernelIsa::kAvx2;
  if (env != nullptr && std::string(env) == "avx2") {
    throw std::invalid_argument("DSI_KERNEL_ISA=avx2 but this CPU or build has no AVX2/FMA/F16C");
  }
  return KernelIsa::kGeneric;
}

struct Task {
  const MatmulJob* job;
  int64_t r0, r1;
};

}  // namespace

WeightMatrix weight_matrix(GgmlType type, const void* data, int64_t rows, int64_t cols) {
  if (rows < 0 || cols <= 0) {
    throw std::invalid_argument("weight matrix of " + std::to_string(rows) + " x " +
                                std::to_string(cols) + " elements");
  }
  WeightMatrix w;
  w.type = type;
  w.data = static_cast<const uint8_t*>(data);
  w.rows = rows;
  w.cols = cols;
  w.row_bytes = ggml_row_size(type, cols);  // validates type and cols
  return w;
}

bool kernel_isa_supported(KernelIsa isa) {
  if (isa == KernelIsa::kGeneric) return true;
#ifdef DSI_HAVE_AVX2_KERNELS
  __builtin_cpu_init();
  // F16C by CPUID (leaf 1, ECX bit 29): clang has no "f16c" for __builtin_cpu_supports.
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  const bool f16c = __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & bit_F16C) != 0;
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c;
#else
  return false;
#endif
}

KernelIsa kernel_isa() {
  static const KernelIsa isa = detect_isa();
  return isa;
}

const char* activations_name(Activations a) {
  return a == Activations::kQ8 ? "q8" : "f32";
}

Activations parse_activations(const std::string& name) {
  if (name == "f32") return Activations::kF32;
  if (name == "q8") return Activations::kQ8;
  throw std::invalid_argument("activations '" + name + "' is not one of f32, q8");
}

bool q8_supported(GgmlType type) {
  return detail::q8_layout(type).block != 0;
}

float dot_q8_reference(const WeightMatrix& w, int64_t r, const float* x) {
  const detail::Q8Layout L = detail::q8_layout(w.type);
  if (L.block == 0) {
    throw std::invalid_argument("dot_q8_reference: a type without 8-bit-activation products");
  }
  std::vector<int8_t> q(static_cast<size_t>(w.cols));
  std::vector<float> d(static_cast<size_t>(w.cols / L.block));
  std::vector<int16_t> s16(static_cast<size_t>(w.cols / 16));
  detail::quantize_q8(x, 1, w.cols, L.block, q.data(), d.data(), s16.data());
  const detail::Q8Acts acts{q.data(), d.data(), s16.data(), w.cols, L.block};
  return detail::q8_dot(w, r, acts, 0);
}

const char* kernel_isa_name(KernelIsa isa) {
  return isa == KernelIsa::kAvx2 ? "avx2" : "generic";
}

float dot_reference(const WeightMatrix& w, int64_t r, const float* x) {
  const int64_t cols = w.cols;
  const QuantGroups g = quant_groups(w.type);
  std::vector<float> q(static_cast<size_t>(cols));
  if (g.group == 0) {
    dequantize_row(w.type, w.row(r), q.data(), cols);
    return detail::dot8(q.data(), x, cols);
  }
  std::vector<float> a(static_cast<size_t>(cols / g.group)), b(a.size()), xs(8 * a.size());
  factor_row(w.type, w.row(r), cols, q.data(), a.data(), b.data());
  detail::group_sums(x, cols, g.group, xs.data());
  return detail::factored_dot(q.data(), a.data(), b.data(), g, x, xs.data(), cols);
}

void weight_row(const WeightMatrix& w, int64_t r, float* out) {
  dequantize_row(w.type, w.row(r), out, w.cols);
}

void qmatmul(std::span<const MatmulJob> jobs, const float* x, int n, int64_t cols, ThreadPool* pool,
             KernelIsa isa, Activations act) {
  if (n <= 0) return;
  const detail::QmatmulIsa& impl = isa_impl(isa);
  std::vector<Task> tasks;
  const int threads = pool != nullptr ? pool->size() : 1;
  for (const MatmulJob& j : jobs) {
    if (j.w->cols != cols) {
      throw std::invalid_argument("qmatmul: a weight of " + std::to_string(j.w->cols) +
                                  " columns over an input of " + std::to_string(cols));
    }
    // A few tokens stream the rows from memory once per token: each thread's rows should lie
    // in long runs, which the hardware prefetcher follows (16-row tasks dealt out in turn cut
    // 2-thread decode to about 60%, measured); 16 tasks a thread still balance the load. With
    // more than one token, a task's rows stay within 256 KiB, so that the later tokens find
    // them in L2.
    int64_t step = kTaskRows;
    if (n <= detail::kMaxStreamTokens) {
      step = std::max(step, (j.w->rows + threads * 16 - 1) / (threads * 16));
      if (n > 1) {
        step = std::min(step, std::max<int64_t>(kTaskRows, (256 << 10) / j.w->row_bytes));
      }
    }
    for (int64_t r = 0; r < j.w->rows; r += step) {
      tasks.push_back({&j, r, std::min(j.w->rows, r + step)});
    }
  }
  const auto use_q8 = [&](const WeightMatrix& w) {
    return act == Activations::kQ8 && q8_supported(w.type);
  };
  // The group sums of every token, for the group sizes of the affine types among the jobs.
  thread_local std::vector<float> sums[2];  // groups of 16, of 32
  bool need[2] = {false, false};
  // The 8-bit activations, for blocks of 32 and of 256.
  thread_local std::vector<int8_t> q8[2];
  thread_local std::vector<float> q8d[2];
  thread_local std::vector<int16_t> q8s[2];
  bool need8[2] = {false, false};
  for (const MatmulJob& j : jobs) {
    if (use_q8(*j.w)) {
      need8[detail::q8_layout(j.w->type).block == 256] = true;
      continue;
    }
    const QuantGroups g = quant_groups(j.w->type);
    if (g.affine) need[g.group == 32] = true;
  }
  detail::Q8Acts acts8[2];
  for (int k = 0; k < 2; ++k) {
    if (!need8[k]) continue;
    const int block = k ? 256 : 32;
    q8[k].resize(static_cast<size_t>(n * cols));
    q8d[k].resize(static_cast<size_t>(n * (cols / block)));
    q8s[k].resize(static_cast<size_t>(n * (cols / 16)));
    detail::quantize_q8(x, n, cols, block, q8[k].data(), q8d[k].data(), q8s[k].data());
    acts8[k] = {q8[k].data(), q8d[k].data(), q8s[k].data(), cols, block};
  }
  for (int k = 0; k < 2; ++k) {
    if (!need[k]) continue;
    const int64_t group = k ? 32 : 16, per_token = cols / group * 8;
    sums[k].resize(static_cast<size_t>(n * per_token));
    for (int t = 0; t < n; ++t) {
      detail::group_sums(x + t * cols, cols, group, sums[k].data() + t * per_token);
    }
  }
  // (Pointers, not the thread_local vectors: the pool's threads have their own.)
  const float* const sum_data[2] = {sums[0].data(), sums[1].data()};
  auto run = [&](int i) {
    const Task& task = tasks[i];
    const WeightMatrix& w = *task.job->w;
    const float* bias = task.job->bias ? task.job->bias + task.r0 : nullptr;
    if (use_q8(w)) {
      impl.q8_rows(w, task.r0, static_cast<int>(task.r1 - task.r0),
                   acts8[detail::q8_layout(w.type).block == 256], n, task.job->y + task.r0,
                   static_cast<size_t>(w.rows), bias);
      return;
    }
    const QuantGroups g = quant_groups(w.type);
    const float* xs = g.affine ? sum_data[g.group == 32] : nullptr;
    impl.rows(w, task.r0, static_cast<int>(task.r1 - task.r0), x, n, xs, task.job->y + task.r0,
              static_cast<size_t>(w.rows), bias);
  };
  const int nt = static_cast<int>(tasks.size());
  if (pool == nullptr || pool->size() == 1 || nt == 1) {
    for (int i = 0; i < nt; ++i) run(i);
  } else {
    pool->parallel_for(nt, run);
  }
}

}  // namespace dsi::kernels
