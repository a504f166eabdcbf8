// MPI test: greedy DSI and SI on a real model generate exactly non-SI's tokens, for several
// prompts (in the model's chat template when it has one), SP 1 .. max_sp and k in KS
// (default 1,4,8).
//   llama_lossless MODEL DRAFTER N_PROMPTS MAX_NEW_TOKENS MAX_SP [KV_HANDOFF] [KS] [T] [TREES]
//                  [MERGED] [TP]
// DRAFTER: the target's layers that a layer-skip drafter keeps ("0-11,19-29"), or the path of a
// drafter model of its own (a .gguf file, e.g. the Qwen2.5-Coder pair's 0.5B).
// KV_HANDOFF: auto (default) | never | always: with always, tasks go round robin over the
// targets and at least 3/4 of the DSI runs with two or more targets must have verifications
// that attended to handed-over KV (not recomputed KV: whether a given short run does depends on
// timing, e.g. every task of the second target preempted), and a sampled DSI run (T = 0.8) must
// give the text of the same run without handoff; corrupt: as always, with rank 3 (target 1)
// importing junk: the test then passes only if some run's tokens differ (the check sees a bad
// handoff). T > 0: sampled at temperature T under the Gumbel coupling (the default), seed i + 1
// for prompt i, where every mode must give non-SI's text as in greedy decoding (docs/sampling.md).
// KS "-": no chains. TREES: token-tree shapes, e.g. "2,1;3,2,1,1;2,2,2" (dsi.tree), each run
// per prompt with SI and with DSI for SP 1 .. max_sp, and checked the same way. Every prompt
// also runs SI and DSI (max_sp) with staged drafting (dsi.stage: ngram, k = 4). MERGED: merged
// drafters, the extra drafters each given as DRAFTER is ("0-5/0-3,7" for two), run per prompt
// with SI and with DSI for every SP the world has left, k = 4. TP: tensor-parallel groups,
// "T" or "T/D" (roles.target_tp, roles.drafter_tp): the world is laid out in groups (the
// non-SI reference runs on a target group too) and SP goes up to the world's target groups.
// Prints "N passed, M failed"; exits 77 (skipped) when MODEL is empty or missing.
#include <fmt/format.h>

#include <cstdlib>
#include <filesystem>
#include <sstream>
#include <string>
#include <vector>

#include "launch/session.h"

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
  const std::string kv = argc > 6 ? argv[6] : "auto";
  const bool corrupt = kv == "corrupt";
  std::vector<int> ks;
  {
    std::stringstream list(argc > 7 ? argv[7] : "1,4,8");
    for (std::string k; std::getline(list, k, ',');) {
      if (k != "-") ks.push_back(std::stoi(k));
    }
  }
  const double temperature = argc > 8 ? std::atof(argv[8]) : 0.0;
  std::vector<std::vector<int>> trees;
  {
    std::stringstream list(argc > 9 ? argv[9] : "");
    for (std::string shape; std::getline(list, shape, ';');) {
      std::stringstream factors(shape);
      trees.emplace_back();
      for (std::string b; std::getline(factors, b, ',');) trees.back().push_back(std::stoi(b));
    }
  }
  std::vector<dsi::ExtraDrafter> merged;
  {
    std::stringstream list(argc > 10 ? argv[10] : "");
    for (std::string d; std::getline(list, d, '/');) {
      if (d.size() > 5 && d.ends_with(".gguf")) {
        merged.push_back({.path = d});
      } else {
        merged.push_back({.layers = dsi::parse_layer_list(d, "MERGED")});
      }
    }
  }
  const std::string tp = argc > 11 ? argv[11] : "";
  const std::string drafter = argv[2];
  const bool drafter_file = drafter.size() > 5 && drafter.ends_with(".gguf");
  dsi::SessionOptions opts;
  if (corrupt) {  // target 1: it imports the prompt and verifies when target 0 is busy
    opts.fault = "kv_corrupt";
    opts.fault_rank = 3;
  }
  opts.overrides = {"engine=llama",
                    "model.path=" + model,
                    drafter_file ? "model.drafter_path=" + drafter
                                 : fmt::format("model.drafter_layers=\"{}\"", drafter),
                    fmt::format("generation.max_new_tokens={}", argv[4]),
                    "model.max_context=512",
                    "runtime.peer_timeout_s=60",
                    "runtime.kv_handoff=" + (corrupt ? std::string("always") : kv)};
  if (corrupt || kv == "always") opts.overrides.push_back("dsi.target_choice=round_robin");
  if (!tp.empty()) {
    const size_t slash = tp.find('/');
    opts.overrides.push_back("roles.target_tp=" + tp.substr(0, slash));
    if (slash != std::string::npos) {
      opts.overrides.push_back("roles.drafter_tp=" + tp.substr(slash + 1));
    }
  }

  return dsi::with_session(
      opts, [](dsi::Session& s) { (void)s.cfg.n_targets(s.world); },
      [&](dsi::Session& s, dsi::Coordinator& coord) {
        int passed = 0, failed = 0, handed = 0;
        int must_hand_runs = 0, must_hand_handed = 0;
        int64_t imported_tokens = 0;
        const int max_sp = std::min(max_sp_arg, s.cfg.n_targets(s.world));
        for (int i = 0; i < n_prompts; ++i) {
          dsi::RunConfig cfg = s.cfg;
          cfg.prompt = kPrompts[i % std::size(kPrompts)];
          cfg.temperature = temperature;
          cfg.sampling_seed = i + 1;
          cfg.mode = dsi::Mode::kNonSi;
          const auto ref = coord.run(cfg, 1).tokens;
          for (int k : ks) {
            cfg.lookahead = k;
            for (dsi::Mode mode : {dsi::Mode::kSi, dsi::Mode::kDsi}) {
              cfg.mode = mode;
              for (int sp = 1; sp <= (mode == dsi::Mode::kSi ? 1 : max_sp); ++sp) {
                const auto r = coord.run(cfg, sp);
                imported_tokens += r.kv.imported_tokens;
                handed += r.kv.verified_on_imported > 0;
                const bool must_hand = kv == "always" && mode == dsi::Mode::kDsi && sp >= 2;
                must_hand_runs += must_hand;
                must_hand_handed += must_hand && r.kv.verified_on_imported > 0;
                if (r.tokens == ref) {
                  ++passed;
                } else {
                  ++failed;
                  fmt::print("{} prompt {} {} k={} sp={}: tokens differ from non-SI\n",
                             corrupt ? "expected:" : "FAIL", i, dsi::mode_name(mode), k, sp);
                }
              }
            }
          }
          for (const auto& shape : trees) {
            // SI and DSI with token trees: the target's text whatever the shape and SP.
            dsi::RunConfig tc = cfg;
            tc.tree = shape;
            tc.lookahead = static_cast<int>(shape.size());
            std::string name;
            for (int b : shape) {
              if (!name.empty()) name += ',';
              name += std::to_string(b);
            }
            for (dsi::Mode mode : {dsi::Mode::kSi, dsi::Mode::kDsi}) {
              tc.mode = mode;
              for (int sp = 1; sp <= (mode == dsi::Mode::kSi ? 1 : max_sp); ++sp) {
                const auto r = coord.run(tc, sp);
                if (r.tokens == ref) {
                  ++passed;
                } else {
                  ++failed;
                  fmt::print("{} prompt {} {} sp={} tree [{}]: tokens differ from non-SI\n",
                             corrupt ? "expected:" : "FAIL", i, dsi::mode_name(mode), sp, name);
                }
                fmt::print("prompt {} {} sp={} tree [{}]: {} tokens in {} verifications\n", i,
                           dsi::mode_name(mode), sp, name, r.tokens.size(),
                           r.stats.tasks_completed);
              }
            }
          }
          {
            // Staged drafting (prompt lookup checked by the drafter): the drafter's drafts are
            // its own, so SI and DSI keep the target's text.
            dsi::RunConfig sc = cfg;
            sc.stage = "ngram";
            sc.stage_tokens = 4;
            sc.lookahead = 4;
            for (dsi::Mode mode : {dsi::Mode::kSi, dsi::Mode::kDsi}) {
              sc.mode = mode;
              const int sp = mode == dsi::Mode::kSi ? 1 : max_sp;
              const auto r = coord.run(sc, sp);
              if (r.tokens == ref) {
                ++passed;
              } else {
                ++failed;
                fmt::print("{} prompt {} {} sp={} staged drafting: tokens differ from non-SI\n",
                           corrupt ? "expected:" : "FAIL", i, dsi::mode_name(mode), sp);
              }
            }
          }
          if (!merged.empty()) {
            // Merged drafters: the lead's chain with the others' proposals as siblings.
            dsi::RunConfig mc = cfg;
            mc.drafters = 1 + static_cast<int>(merged.size());
            mc.extra_drafters = merged;
            mc.lookahead = 4;
            for (dsi::Mode mode : {dsi::Mode::kSi, dsi::Mode::kDsi}) {
              mc.mode = mode;
              const int most = std::min(max_sp, s.world - 1 - mc.drafters);
              for (int sp = 1; sp <= (mode == dsi::Mode::kSi ? 1 : most); ++sp) {
                const auto r = coord.run(mc, sp);
                if (r.tokens == ref) {
                  ++passed;
                } else {
                  ++failed;
                  fmt::print("{} prompt {} {} sp={} {} drafters: tokens differ from non-SI\n",
                             corrupt ? "expected:" : "FAIL", i, dsi::mode_name(mode), sp,
                             mc.drafters);
                }
                fmt::print("prompt {} {} sp={} {} drafters: {} tokens in {} verifications, {} "
                           "siblings committed\n",
                           i, dsi::mode_name(mode), sp, mc.drafters, r.tokens.size(),
                           r.stats.tasks_completed, r.stats.siblings_committed);
              }
            }
          }
          if (temperature <= 0 || cfg.coupling == "gumbel") {
            // runtime.adapt: the policy's switches of mode, k and SP never change a token.
            cfg.mode = dsi::Mode::kDsi;
            cfg.adapt = true;
            const auto r = coord.run(cfg, max_sp);
            cfg.adapt = false;
            if (r.tokens == ref) {
              ++passed;
            } else {
              ++failed;
              fmt::print("{} prompt {} adaptive sp={}: tokens differ from non-SI\n",
                         corrupt ? "expected:" : "FAIL", i, max_sp);
            }
          }
          if (kv == "always") {
            // Speculative sampling: handed-over KV gives the targets the same p, and the draws
            // are keyed by position, so the text must equal that of a run that recomputes.
            dsi::RunConfig sc = cfg;
            sc.mode = dsi::Mode::kDsi;
            sc.lookahead = 2;
            sc.temperature = 0.8;
            sc.kv_handoff = "never";
            const auto recomputed = coord.run(sc, max_sp).tokens;
            sc.kv_handoff = "always";
            const auto r = coord.run(sc, max_sp);
            if (r.tokens == recomputed && r.kv.verified_on_imported > 0) {
              ++passed;
            } else {
              ++failed;
              fmt::print("FAIL prompt {} sampling T=0.8 sp={}: {}\n", i, max_sp,
                         r.tokens != recomputed ? "tokens differ from the run without handoff"
                                                : "no verification attended to handed-over KV");
            }
          }
          fmt::print("prompt {}: {} tokens, checked\n", i, ref.size());
          std::fflush(stdout);
        }
        if (must_hand_runs > 0) {
          const bool enough = 4 * must_hand_handed >= 3 * must_hand_runs;
          fmt::print("{}: {} of {} DSI runs with SP >= 2 verified on handed-over KV (3/4 needed)\n",
                     enough ? "ok" : "FAIL", must_hand_handed, must_hand_runs);
          if (enough) {
            ++passed;
          } else {
            ++failed;
          }
        }
        fmt::print("world {}: {} passed, {} failed; {} runs verified on imported KV ({} tokens "
                   "imported)\n",
                   s.world, passed, failed, handed, imported_tokens);
        if (corrupt) {
          if (failed > 0) return 0;
          fmt::print("FAIL: corrupted KV handoffs went unnoticed\n");
          return 1;
        }
        return failed == 0 ? 0 : 1;
      });
}
