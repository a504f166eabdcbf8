// Tensor parallelism on this machine (not a test): greedy decoding of a model whole with 1 and
// with TP threads, and as TP shards of one thread each (threads of one process over the
// loopback collective, as TP ranks would run), in one run: latency per token, the weights and
// KV each shard reads and holds per token, and whether the tokens agree with the whole model.
//
// usage: tp_bench MODEL.gguf [--tp 2] [--tokens 32]
#include <chrono>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "engines/llama/llama_engine.h"

namespace {

using namespace dsi;
using Clock = std::chrono::steady_clock;

// Greedy decoding of n tokens after a short prompt; returns ms per decode step.
double decode(Engine& e, int n, std::vector<Token>& out) {
  CancelFlag never;
  const std::vector<Token> prompt = {1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365};
  Token t = e.forward(prompt, 1, never).argmax()[0];
  const auto t0 = Clock::now();
  for (int i = 0; i < n; ++i) {
    out.push_back(t);
    t = e.forward(std::span(&t, 1), 1, never).argmax()[0];
  }
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count() / n;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: tp_bench MODEL.gguf [--tp 2] [--tokens 32]\n");
    return 2;
  }
  int tp = 2, tokens = 32;
  for (int i = 2; i + 1 < argc; i += 2) {
    const std::string k = argv[i];
    if (k == "--tp") {
      tp = std::stoi(argv[i + 1]);
    } else if (k == "--tokens") {
      tokens = std::stoi(argv[i + 1]);
    } else {
      std::fprintf(stderr, "tp_bench: unknown option %s\n", k.c_str());
      return 2;
    }
  }
  try {
    const auto m = load_llama_model(argv[1], {});
    LlamaEngineOptions o;
    o.max_context = 256;
    std::printf("%s, TP %d, %d tokens\n%-24s %10s %14s %12s %8s\n", argv[1], tp, tokens, "run",
                "ms/token", "weights MB/tok", "KV KB/tok", "tokens");
    std::vector<Token> want;
    {
      LlamaEngine e(m, o);
      const double ms = decode(e, tokens, want);
      std::printf("%-24s %10.2f %14.1f %12.1f %8s\n", "whole, 1 thread", ms,
                  e.weight_bytes_per_token() / 1e6, e.kv_bytes_per_token() / 1e3, "-");
    }
    {
      LlamaEngineOptions ot = o;
      ot.threads = tp;
      LlamaEngine e(m, ot);
      std::vector<Token> got;
      const double ms = decode(e, tokens, got);
      std::printf("%-24s %10.2f %14.1f %12.1f %8s\n",
                  ("whole, " + std::to_string(tp) + " threads").c_str(), ms,
                  e.weight_bytes_per_token() / 1e6, e.kv_bytes_per_token() / 1e3,
                  got == want ? "same" : "DIFFER");
    }
    LoopbackCollectiveHub hub(tp);
    std::vector<double> ms(tp);
    std::vector<size_t> wb(tp), kv(tp);
    std::vector<std::vector<Token>> got(tp);
    std::vector<std::string> err(tp);
    std::vector<std::thread> threads;
    for (int r = 0; r < tp; ++r) {
      threads.emplace_back([&, r] {
        try {
          auto member = hub.member(r);
          LlamaEngineOptions os = o;
          os.tp = member.get();
          LlamaEngine e(m, os);
          wb[r] = e.weight_bytes_per_token();
          kv[r] = e.kv_bytes_per_token();
          ms[r] = decode(e, tokens, got[r]);
        } catch (const std::exception& ex) {
          err[r] = ex.what();
        }
      });
    }
    for (auto& t : threads) t.join();
    if (!err[0].empty()) throw std::runtime_error(err[0]);
    std::printf("%-24s %10.2f %14.1f %12.1f %8s\n",
                ("TP " + std::to_string(tp) + ", 1 thread each").c_str(), ms[0], wb[0] / 1e6,
                kv[0] / 1e3, got[0] == want ? "same" : "DIFFER");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "tp_bench: %s\n", e.what());
    return 1;
  }
  return 0;
}
