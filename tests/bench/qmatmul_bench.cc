// Benchmark of the products over weights in their GGUF types (kernels/qmatmul.h), one thread
// (not a test). For each type: elements per second and weight bytes per second of a single
// token (decode) over a matrix that fits in L2 and over one far larger than the caches, and of
// batches (verify, prefill), against the memory read bandwidth of one thread measured here.
//
// usage: qmatmul_bench [--cols N] [--types q4_k,q6_k,...] [--batches 1,4,16] [--isa generic|avx2]
//                      [--activations f32|q8]
#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <string>
#include <vector>

#include "kernels/qmatmul.h"
#include "tests/quant_test_data.h"

namespace {

using Clock = std::chrono::steady_clock;
using dsi::GgmlType;
namespace k = dsi::kernels;

double secs(Clock::time_point a) {
  return std::chrono::duration<double>(Clock::now() - a).count();
}

// Seconds per call of f, the best of several timings of enough calls to last ~0.1 s.
template <class F>
double best_time(F&& f) {
  f();
  int calls = 1;
  for (;;) {
    auto t = Clock::now();
    for (int i = 0; i < calls; ++i) f();
    if (secs(t) > 0.05) break;
    calls *= 2;
  }
  double best = 1e30;
  for (int rep = 0; rep < 5; ++rep) {
    auto t = Clock::now();
    for (int i = 0; i < calls; ++i) f();
    best = std::min(best, secs(t) / calls);
  }
  return best;
}

double read_gbps() {
  std::vector<uint64_t> buf((512u << 20) / sizeof(uint64_t), 1);
  uint64_t sink = 0;
  const double s = best_time([&] {
    uint64_t acc = 0;
    for (uint64_t v : buf) acc += v;
    sink += acc;
  });
  if (sink == 0) std::abort();
  return buf.size() * sizeof(uint64_t) / s / 1e9;
}

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (!item.empty()) out.push_back(item);
  }
  return out;
}

bool type_from_name(const std::string& name, GgmlType* out) {
  for (GgmlType t : {GgmlType::F32, GgmlType::F16, GgmlType::BF16, GgmlType::Q8_0, GgmlType::Q4_0,
                     GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::Q2_K, GgmlType::Q3_K,
                     GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K}) {
    std::string n = dsi::ggml_type_name(t);
    for (char& c : n) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    if (n == name) {
      *out = t;
      return true;
    }
  }
  return false;
}

}  // namespace

int main(int argc, char** argv) {
  int64_t cols = 1536;
  std::vector<std::string> types = {"f32",  "f16",  "bf16", "q8_0", "q4_0", "q4_1", "q5_0",
                                    "q5_1", "q2_k", "q3_k", "q4_k", "q5_k", "q6_k"};
  std::vector<int> batches = {1, 4, 16};
  k::KernelIsa isa = k::kernel_isa();
  k::Activations act = k::Activations::kF32;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i], v = argv[i + 1];
    if (a == "--cols") {
      cols = std::stoll(v);
    } else if (a == "--types") {
      types = split(v);
    } else if (a == "--batches") {
      batches.clear();
      for (const auto& b : split(v)) batches.push_back(std::stoi(b));
    } else if (a == "--isa") {
      isa = v == "generic" ? k::KernelIsa::kGeneric : k::KernelIsa::kAvx2;
      if (!k::kernel_isa_supported(isa)) {
        std::fprintf(stderr, "this CPU cannot run the %s kernels\n", v.c_str());
        return 2;
      }
    } else if (a == "--activations") {
      act = k::parse_activations(v);
    } else {
      std::fprintf(stderr, "unknown option %s\n", a.c_str());
      return 2;
    }
  }
  if (argc % 2 == 0) {
    std::fprintf(stderr,
                 "usage: %s [--cols N] [--types a,b] [--batches 1,4] [--isa I] [--activations A]\n",
                 argv[0]);
    return 2;
  }
  std::printf(
      "kernels %s, %s activations, cols %lld, one thread; memory read bandwidth %.1f GB/s\n\n",
      k::kernel_isa_name(isa), k::activations_name(act), static_cast<long long>(cols), read_gbps());
  std::printf("%-6s %6s %16s %16s %14s", "type", "bits", "L2 Gelem/s", "DRAM Gelem/s", "DRAM GB/s");
  for (int b : batches) {
    if (b > 1) std::printf("  batch %-2d Gelem/s", b);
  }
  std::printf("\n");
  for (const auto& name : types) {
    GgmlType t;
    if (!type_from_name(name, &t)) {
      std::fprintf(stderr, "unknown type %s\n", name.c_str());
      return 2;
    }
    if (cols % dsi::ggml_block_size(t) != 0) {
      std::printf("%-6s (cols must be a multiple of %lld)\n", name.c_str(),
                  static_cast<long long>(dsi::ggml_block_size(t)));
      continue;
    }
    const size_t row_bytes = dsi::ggml_row_size(t, cols);
    // A matrix of ~256 KiB (stays in L2) and one of ~512 MiB (streams from memory).
    const int64_t small_rows = std::max<int64_t>(8, (256 << 10) / row_bytes / 8 * 8);
    const int64_t big_rows = std::max<int64_t>(8, (512ll << 20) / row_bytes / 8 * 8);
    const auto small = dsi::kernels::quant_test::random_matrix(t, small_rows, cols, 1);
    const auto big = dsi::kernels::quant_test::random_matrix(t, big_rows, cols, 2);
    const auto ws = k::weight_matrix(t, small.data(), small_rows, cols);
    const auto wb = k::weight_matrix(t, big.data(), big_rows, cols);
    const int max_b = std::max(1, *std::max_element(batches.begin(), batches.end()));
    const auto x = dsi::kernels::quant_test::random_floats(static_cast<size_t>(max_b) * cols, 3);
    std::vector<float> y(static_cast<size_t>(max_b) * big_rows);
    auto rate = [&](const k::WeightMatrix& w, int n) {
      const double s =
          best_time([&] { k::qmatmul(y.data(), x.data(), w, nullptr, n, nullptr, isa, act); });
      return double(w.rows) * w.cols * n / s / 1e9;
    };
    const double l2 = rate(ws, 1), dram = rate(wb, 1);
    std::printf("%-6s %6.2f %16.2f %16.2f %14.2f", name.c_str(), 8.0 * row_bytes / cols, l2, dram,
                dram * row_bytes / cols);
    for (int b : batches) {
      if (b > 1) std::printf("  %17.2f", rate(ws, b));
    }
    std::printf("\n");
  }
  return 0;
}
