// Benchmark of the llama engines (not a test). CPU (default): load time and memory, prefill
// and decode tokens/s per thread count, and for layer-skip drafters their decode speed and
// greedy acceptance against the full model (teacher-forced along the target's greedy
// continuation); a decode step's weight bytes per second against the memory read bandwidth
// measured here with as many threads. --device cuda: the CUDA engine's prefill, decode (median
// one-token forward) and verify (k = 4, 8 tokens) times against the HBM bound of a decode step
// (weight bytes read per token / peak bandwidth).
//
// usage: llama_bench MODEL.gguf [--prompt N] [--gen N] [--threads 1,2] [--tokens a,b,c]
//                               [--skip "0,2,4;0-14"] (layer lists; a-b is a range)
//                               [--text "prompt"] (encoded with the GGUF's own tokenizer; special
//                               token texts such as <|im_start|> are recognised)
//                               [--reps N] (speeds are the best of N runs)
//                               [--device cpu|cuda] [--dtype f32|f16|bf16] [--gpu N]
//                               [--hbm-gbps G] (peak HBM bandwidth; default 4800, H200)
//                               [--gemm invariant|cublas] (CUDA: the batch-invariant GEMM, or
//                               cuBLAS's, faster for prefills but not invariant)
//                               [--activations f32|q8] (CPU: q8 rounds the activations of
//                               quantized products to 8 bits, as llama.cpp; not exact)
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "engines/llama/cuda_engine.h"
#include "engines/llama/llama_engine.h"
#include "engines/llama/llama_loader.h"
#include "kernels/argmax.h"
#include "kernels/qmatmul.h"
#include "model/tokenizer/tokenizer.h"

namespace {

using Clock = std::chrono::steady_clock;
double secs(Clock::time_point a) {
  return std::chrono::duration<double>(Clock::now() - a).count();
}

double cpu_secs() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_utime.tv_sec + u.ru_stime.tv_sec + 1e-6 * (u.ru_utime.tv_usec + u.ru_stime.tv_usec);
}

long rss_kib() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::atol(line.c_str() + 6);
  }
  return -1;
}

std::vector<int> parse_list(const std::string& s) {
  std::vector<int> v;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (item.empty()) continue;
    const size_t dash = item.find('-');
    if (dash != std::string::npos && dash > 0) {
      for (int i = std::stoi(item.substr(0, dash)); i <= std::stoi(item.substr(dash + 1)); ++i) {
        v.push_back(i);
      }
    } else {
      v.push_back(std::stoi(item));
    }
  }
  return v;
}

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, sep)) out.push_back(item);
  return out;
}

dsi::Token argmax(const dsi::Logits& l, int row) {
  int32_t t = 0;
  dsi::kernels::argmax_cpu(&t, l.row(row).data(), 1, l.vocab);
  return t;
}

std::string describe(const std::vector<int>& layers) {
  std::string s;
  for (size_t i = 0; i < layers.size(); ++i) {
    size_t j = i;
    while (j + 1 < layers.size() && layers[j + 1] == layers[j] + 1) ++j;
    if (!s.empty()) s += ",";
    s += std::to_string(layers[i]);
    if (j > i + 1) {
      s += '-';
      s += std::to_string(layers[j]);
      i = j;
    }
  }
  return s;
}

// Memory read bandwidth with `threads` threads, each summing its own 256 MiB (far beyond any
// cache) as 64-bit integers: the best of 3 passes, in GB/s. The bound a decode step that
// streams its weights once can reach.
double read_bandwidth_gbps(int threads) {
  constexpr size_t kWords = (256u << 20) / sizeof(uint64_t);
  std::vector<std::vector<uint64_t>> bufs(threads, std::vector<uint64_t>(kWords, 1));
  std::vector<uint64_t> sums(threads);
  double best = 0;
  for (int pass = 0; pass < 3; ++pass) {
    auto t = Clock::now();
    std::vector<std::thread> pool;
    for (int i = 0; i < threads; ++i) {
      pool.emplace_back([&, i] {
        uint64_t s = 0;
        for (uint64_t v : bufs[i]) s += v;
        sums[i] += s;
      });
    }
    for (auto& th : pool) th.join();
    best = std::max(best, double(threads) * kWords * sizeof(uint64_t) / secs(t) / 1e9);
  }
  for (uint64_t s : sums) {
    if (s != 3 * kWords) std::abort();  // keeps the sums live
  }
  return best;
}

#ifdef DSI_WITH_CUDA
double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Bytes a one-token forward must read from device memory for the weights: every matrix of
// the kept layers and the head in the weight dtype, the norms and biases in FP32, and one
// embedding row (the KV cache read is on top, growing with the context).
double decode_weight_bytes(const dsi::LlamaModel& m, size_t elt) {
  const dsi::LlamaConfig& c = m.config;
  double b = 0;
  for (const auto& L : m.weights.layers) {
    for (const auto* w : {&L.wq, &L.wk, &L.wv, &L.wo, &L.w_gate, &L.w_up, &L.w_down}) {
      b += double(w->rows) * double(w->cols) * elt;
    }
    for (const auto* v : {&L.attn_norm, &L.ffn_norm, &L.bq, &L.bk, &L.bv}) {
      b += double(v->size()) * sizeof(float);
    }
  }
  b += double(c.n_vocab) * c.dim * elt + double(c.dim) * elt + c.dim * sizeof(float);
  return b;
}

int cuda_bench(const dsi::LlamaModel& model, const std::vector<dsi::Token>& prompt, int gen,
               int reps, const std::string& dtype_name, int gpu, double hbm_gbps,
               const std::string& gemm) {
  const dsi::CudaDtype dtype = dsi::parse_cuda_dtype(dtype_name);
  const int prompt_len = static_cast<int>(prompt.size());
  dsi::CudaEngineOptions o;
  o.dtype = dtype;
  o.device = gpu;
  o.max_context = prompt_len + gen + 8;
  o.cublas_gemm = gemm == "cublas";
  auto t0 = Clock::now();
  dsi::CudaEngine e(model, o);
  std::printf("\ncuda engine on %s, dtype %s, %s GEMMs: upload %.2f s, KV %.1f KiB/token\n",
              e.device_name().c_str(), dtype_name.c_str(),
              o.cublas_gemm ? "cuBLAS" : "batch-invariant", secs(t0),
              e.kv_bytes_per_token() / 1024.0);
  dsi::CancelFlag never;
  auto timed = [&](std::span<const dsi::Token> tokens, int n_logits, dsi::Logits* out) {
    auto t = Clock::now();
    dsi::Logits l = e.forward(tokens, n_logits, never);
    const double s = secs(t);
    if (out) *out = std::move(l);
    return s;
  };
  timed(prompt, 1, nullptr);  // warm-up: cuBLAS heuristics, lazy module loading
  e.truncate(0);

  // Prefill (best of reps), then greedy decode: every one-token forward is timed.
  double prefill_s = 1e30;
  std::vector<double> steps;
  std::vector<dsi::Token> cont;
  for (int rep = 0; rep < reps; ++rep) {
    e.truncate(0);
    cont.clear();
    dsi::Logits l;
    prefill_s = std::min(prefill_s, timed(prompt, 1, &l));
    dsi::Token next = argmax(l, 0);
    for (int i = 0; i < gen; ++i) {
      cont.push_back(next);
      steps.push_back(timed(std::span(&cont.back(), 1), 1, &l));
      next = argmax(l, 0);
    }
  }
  const double step_s = median(steps);
  // Verify forwards of k drafted tokens (the greedy continuation) after the prompt.
  std::vector<std::pair<int, double>> verify;
  for (int k : {4, 8}) {
    if (k > gen) continue;
    std::vector<double> t;
    for (int i = 0; i < std::max(20, gen); ++i) {
      e.truncate(prompt_len);
      t.push_back(timed(std::span(cont).first(k), k, nullptr));
    }
    verify.emplace_back(k, median(t));
  }

  const double bytes = decode_weight_bytes(model, dtype == dsi::CudaDtype::kF32 ? 4 : 2);
  const double bound_s = bytes / (hbm_gbps * 1e9);
  std::printf("%-8s %14s %14s %12s", "prompt", "prefill tok/s", "decode tok/s", "decode ms");
  for (const auto& [k, t] : verify) std::printf(" %10s%-2d", "verify k=", k);
  std::printf("\n%-8d %14.1f %14.1f %12.3f", prompt_len, prompt_len / prefill_s, 1 / step_s,
              1e3 * step_s);
  for (const auto& [k, t] : verify) std::printf(" %9.3f ms", 1e3 * t);
  std::printf(
      "\nHBM bound of a decode step: %.1f MB of weights per token / %.0f GB/s peak (--hbm-gbps) "
      "= %.3f ms (%.0f tok/s); achieved %.1f%% of it (%.0f GB/s)\n",
      bytes / 1e6, hbm_gbps, 1e3 * bound_s, 1 / bound_s, 100 * bound_s / step_s,
      bytes / step_s / 1e9);
  std::printf("greedy continuation:");
  for (dsi::Token t : cont) std::printf(" %d", t);
  std::printf("\n");
  return 0;
}
#endif

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr,
                 "usage: %s MODEL.gguf [--prompt N] [--gen N] [--threads 1,2] [--tokens ids]"
                 " [--skip \"l,l,...;a-b;...\"] [--text prompt] [--reps N] [--device cpu|cuda]"
                 " [--dtype f32|f16|bf16] [--gpu N] [--hbm-gbps G] [--activations f32|q8]"
                 " [--gemm invariant|cublas]\n",
                 argv[0]);
    return 2;
  }
  const std::string path = argv[1];
  int prompt_len = 64, gen = 32, reps = 1;
  std::vector<int> threads = {1, 2};
  std::vector<dsi::Token> prompt;
  std::string skip_spec, text, device = "cpu", dtype = "f16";
  [[maybe_unused]] std::string gemm = "invariant";
  dsi::kernels::Activations act = dsi::kernels::Activations::kF32;
  [[maybe_unused]] int gpu = 0;  // read by the CUDA section only
  [[maybe_unused]] double hbm_gbps = 4800;
  for (int i = 2; i + 1 < argc; i += 2) {
    const std::string a = argv[i], v = argv[i + 1];
    if (a == "--prompt") {
      prompt_len = std::stoi(v);
    } else if (a == "--gen") {
      gen = std::stoi(v);
    } else if (a == "--threads") {
      threads = parse_list(v);
    } else if (a == "--tokens") {
      prompt = parse_list(v);
    } else if (a == "--skip") {
      skip_spec = v;
    } else if (a == "--reps") {
      reps = std::max(1, std::stoi(v));
    } else if (a == "--text") {
      text = v;
    } else if (a == "--device") {
      device = v;
    } else if (a == "--dtype") {
      dtype = v;
    } else if (a == "--gemm") {
      if (v != "invariant" && v != "cublas") {
        std::fprintf(stderr, "--gemm must be invariant or cublas, not %s\n", v.c_str());
        return 2;
      }
      gemm = v;
    } else if (a == "--gpu") {
      gpu = std::stoi(v);
    } else if (a == "--activations") {
      act = dsi::kernels::parse_activations(v);
    } else if (a == "--hbm-gbps") {
      hbm_gbps = std::stod(v);
    } else {
      std::fprintf(stderr, "unknown option %s\n", a.c_str());
      return 2;
    }
  }

  const long rss0 = rss_kib();
  auto t0 = Clock::now();
  auto model = dsi::load_llama_gguf(path);
  const double load_s = secs(t0);
  const dsi::LlamaConfig& c = model->config;
  std::printf("model %s\n  arch %s, vocab %d, dim %d, layers %d, heads %d/%d, ffn %d, ctx %d\n",
              path.c_str(), c.arch.c_str(), c.n_vocab, c.dim, c.n_layers, c.n_heads, c.n_kv_heads,
              c.ffn_dim, c.max_context);
  std::printf(
      "  load (parse; matrices used in place from the mapping) %.3f s, weights %.1f MiB in their "
      "GGUF types, RSS +%.1f MiB\n  kernels %s, %s activations\n",
      load_s, model->weights.bytes() / 1048576.0, (rss_kib() - rss0) / 1024.0,
      dsi::kernels::kernel_isa_name(dsi::kernels::kernel_isa()),
      dsi::kernels::activations_name(act));
  {
    // The KV cache is reserved for the whole context but its pages are committed as it fills.
    const long rss1 = rss_kib();
    dsi::LlamaEngine e(model, {});
    std::printf(
        "  KV cache %.1f KiB/token, %.1f MiB reserved for ctx %d, RSS +%.1f MiB when empty\n",
        e.kv_bytes_per_token() / 1024.0,
        e.kv_bytes_per_token() * double(e.max_context()) / 1048576.0, e.max_context(),
        (rss_kib() - rss1) / 1024.0);
  }

  std::unique_ptr<dsi::Tokenizer> tok;
  if (!text.empty()) {
    tok = dsi::Tokenizer::from_gguf(*dsi::GgufFile::open(path));
    prompt = tok->encode(text, /*add_special=*/true, /*parse_special=*/true);
  }
  if (prompt.empty()) {
    uint32_t s = 12345;  // fixed pseudo-random ids, away from the special tokens at the start
    for (int i = 0; i < prompt_len; ++i) {
      s = s * 1664525u + 1013904223u;
      prompt.push_back(static_cast<dsi::Token>(100 + (s >> 8) % (c.n_vocab - 100)));
    }
  }
  prompt_len = static_cast<int>(prompt.size());
  if (device == "cuda") {
#ifdef DSI_WITH_CUDA
    try {
      return cuda_bench(*model, prompt, gen, reps, dtype, gpu, hbm_gbps, gemm);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "cuda engine: %s\n", e.what());
      return 1;
    }
#else
    std::fprintf(stderr, "--device cuda: this build has no CUDA\n");
    return 2;
#endif
  }
  if (device != "cpu") {
    std::fprintf(stderr, "unknown device %s (cpu or cuda)\n", device.c_str());
    return 2;
  }
  dsi::CancelFlag never;

  // Greedy target continuation, and speed at each thread count.
  std::vector<dsi::Token> seq = prompt;
  // Weight bytes streamed per decode step: every matrix once (an untied embedding table is
  // only gathered from, a tied one is read whole as the LM head).
  const double step_bytes =
      model->weights.bytes() - (c.tied_head ? 0.0 : model->weights.token_embd.bytes());
  std::printf("  a decode step reads %.1f MiB of weights (the memory-bandwidth bound below)\n",
              step_bytes / 1048576.0);
  std::printf("\n%-8s %8s %14s %14s %12s %12s %12s %12s %11s\n", "threads", "prompt",
              "prefill tok/s", "decode tok/s", "decode ms", "CPU ms/tok", "weight GB/s",
              "memory GB/s", "idle CPU %");
  for (int th : threads) {
    dsi::LlamaEngineOptions o;
    o.threads = th;
    o.max_context = prompt_len + gen + 1;
    o.activations = act;
    dsi::LlamaEngine e(model, o);
    double prefill_s = 1e30, decode_s = 1e30;  // best of `reps` runs: the machine is shared
    double decode_cpu_s = 1e30;                // process CPU time of the decode steps
    std::vector<dsi::Token> cont;
    for (int rep = 0; rep < reps; ++rep) {
      e.truncate(0);
      cont.clear();
      auto tp = Clock::now();
      dsi::Logits l = e.forward(prompt, 1, never);
      prefill_s = std::min(prefill_s, secs(tp));
      dsi::Token next = argmax(l, 0);
      auto td = Clock::now();
      const double cpu0 = cpu_secs();
      for (int i = 0; i < gen; ++i) {
        cont.push_back(next);
        l = e.forward(std::vector<dsi::Token>{next}, 1, never);
        next = argmax(l, 0);
      }
      decode_s = std::min(decode_s, secs(td));
      decode_cpu_s = std::min(decode_cpu_s, cpu_secs() - cpu0);
    }
    // CPU the process burns while the engine sits idle for 0.5 s after a forward (pool
    // threads that kept spinning would show here).
    const double c0 = cpu_secs();
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    const double idle_cpu = (cpu_secs() - c0) / 0.5;
    std::printf("%-8d %8d %14.1f %14.1f %12.2f %12.2f %12.1f %12.1f %11.0f\n", th, prompt_len,
                prompt_len / prefill_s, gen / decode_s, 1e3 * decode_s / gen,
                1e3 * decode_cpu_s / gen, step_bytes * gen / decode_s / 1e9,
                read_bandwidth_gbps(th), 100 * idle_cpu);
    if (seq.size() == prompt.size()) seq.insert(seq.end(), cont.begin(), cont.end());
  }
  std::printf("greedy continuation:");
  for (size_t i = prompt.size(); i < seq.size(); ++i) std::printf(" %d", seq[i]);
  std::printf("\n");
  if (tok) {
    std::printf("prompt tokens:");
    for (dsi::Token t : prompt) std::printf(" %d", t);
    std::printf("\ntext: %s\n", tok->decode(std::span(seq).subspan(prompt.size())).c_str());
  }

  // Target argmax at every position of the continuation, for the acceptance figures.
  std::vector<dsi::Token> target_next(seq.begin() + prompt_len, seq.end());
  std::vector<std::vector<int>> skips;
  if (skip_spec.empty()) {
    // Every other layer (plus the last), the first half, and the model without its middle
    // quarter / middle half (Draft & Verify keeps the first and last layers).
    auto without_middle = [&](int n_drop) {
      std::vector<int> v;
      const int from = (c.n_layers - n_drop) / 2;
      for (int l = 0; l < c.n_layers; ++l) {
        if (l < from || l >= from + n_drop) v.push_back(l);
      }
      return v;
    };
    std::vector<int> even, first_half;
    for (int l = 0; l < c.n_layers; ++l) {
      if (l % 2 == 0 || l == c.n_layers - 1) even.push_back(l);
      if (l < (c.n_layers + 1) / 2) first_half.push_back(l);
    }
    skips = {even, first_half, without_middle(std::max(1, c.n_layers / 4)),
             without_middle(std::max(1, c.n_layers / 2))};
  } else {
    for (const auto& s : split(skip_spec, ';')) skips.push_back(parse_list(s));
  }
  // Small models make some of the default sets coincide.
  for (size_t i = 0; i < skips.size(); ++i) {
    if (std::find(skips.begin(), skips.begin() + i, skips[i]) != skips.begin() + i) {
      skips.erase(skips.begin() + i--);
    }
  }
  std::printf("\n%-40s %5s %14s %8s   (threads 1, %d positions)\n", "drafter layers", "kept",
              "decode tok/s", "accept", gen);
  for (const auto& layers : skips) {
    dsi::LlamaEngineOptions o;
    o.threads = 1;
    o.layers = layers;
    o.max_context = prompt_len + gen + 1;
    dsi::LlamaEngine d(model, o);
    dsi::Logits l = d.forward(prompt, 1, never);
    int agree = argmax(l, 0) == target_next[0];
    auto td = Clock::now();
    for (int i = 0; i + 1 < gen; ++i) {
      l = d.forward(std::vector<dsi::Token>{target_next[i]}, 1, never);
      agree += argmax(l, 0) == target_next[i + 1];
    }
    const double decode_s = secs(td);
    std::printf("%-40s %5zu %14.1f %7.1f%%\n", describe(layers).c_str(), layers.size(),
                (gen - 1) / decode_s, 100.0 * agree / gen);
  }
  return 0;
}
