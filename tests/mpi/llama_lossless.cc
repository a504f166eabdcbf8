// MPI test: greedy DSI and SI on a real model generate exactly non-SI's tokens, for several
// prompts (in the model's chat template when it has one), SP 1 .. max_sp and k in {1, 4, 8}.
//   llama_lossless MODEL DRAFTER_LAYERS N_PROMPTS MAX_NEW_TOKENS MAX_SP
// Prints "N passed, M failed"; exits 77 (skipped) when MODEL is empty or missing.
#include <fmt/format.h>

#include <cstdlib>
#include <filesystem>

#include "runtime/mpi_session.h"

namespace {
const char* kPrompts[] = {
    "The capital of France is",
    "Write a haiku about the sea.",
    "List three prime numbers and explain why they are prime.",
    "Once upon a time, in a small village,",
    "How do I sort a list in Python?",
    "Translate to German: good morning, my friend.",
    "What is speculative decoding?",
    "Describe the color blue to someone who cannot see.",
    "def fibonacci(n):",
    "Give me a recipe for pancakes.",
    "Why is the sky blue?",
    "Summarise the plot of Hamlet in two sentences.",
};
}  // namespace

int main(int argc, char** argv) {
  if (argc < 6) {
    fmt::print(stderr, "usage: {} MODEL DRAFTER_LAYERS N_PROMPTS MAX_NEW_TOKENS MAX_SP\n", argv[0]);
    return 2;
  }
  const std::string model = argv[1];
  if (model.empty() || !std::filesystem::exists(model)) {
    fmt::print("model '{}' not present: skipped\n", model);
    return 77;
  }
  const int n_prompts = std::atoi(argv[3]);
  const int max_sp_arg = std::atoi(argv[5]);
  dsi::SessionOptions opts;
  opts.overrides = {"engine=llama", "model.path=" + model,
                    fmt::format("model.drafter_layers=\"{}\"", argv[2]),
                    fmt::format("generation.max_new_tokens={}", argv[4]),
                    "model.max_context=512", "runtime.peer_timeout_s=60"};
  return dsi::with_session(
      opts, [](dsi::Session& s) { (void)s.cfg.n_targets(s.world); },
      [&](dsi::Session& s, dsi::Coordinator& coord) {
        int passed = 0, failed = 0;
        const int max_sp = std::min(max_sp_arg, s.world - 2);
        for (int i = 0; i < n_prompts; ++i) {
          dsi::RunConfig cfg = s.cfg;
          cfg.prompt = kPrompts[i % std::size(kPrompts)];
          cfg.mode = dsi::Mode::kNonSi;
          const auto ref = coord.run(cfg, 1).tokens;
          for (int k : {1, 4, 8}) {
            cfg.lookahead = k;
            for (dsi::Mode mode : {dsi::Mode::kSi, dsi::Mode::kDsi}) {
              cfg.mode = mode;
              for (int sp = 1; sp <= (mode == dsi::Mode::kSi ? 1 : max_sp); ++sp) {
                const auto r = coord.run(cfg, sp);
                if (r.tokens == ref) {
                  ++passed;
                } else {
                  ++failed;
                  fmt::print("FAIL prompt {} {} k={} sp={}: tokens differ from non-SI\n", i,
                             dsi::mode_name(mode), k, sp);
                }
              }
            }
          }
          fmt::print("prompt {}: {} tokens, checked\n", i, ref.size());
          std::fflush(stdout);
        }
        fmt::print("world {}: {} passed, {} failed\n", s.world, passed, failed);
        return failed == 0 ? 0 : 1;
      });
}
