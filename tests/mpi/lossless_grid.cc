// MPI test (run by ctest under mpirun at several world sizes): inside one launch, every mode
// for SP 1 .. world-2, k in {1, 3, 5} and a in {0, 0.5, 0.9, 1}, and adaptive runs (also with
// an acceptance that drifts 0.9 -> 0.1 -> 0.9), must generate exactly the tokens non-SI
// generates. Prints one line per failure and "N passed, M failed".
#include <fmt/format.h>

#include "launch/session.h"
#include "sim/simulator.h"

int main() {
  dsi::SessionOptions opts;
  opts.overrides = {"synthetic.t_ms=2", "synthetic.c=0.15", "generation.max_new_tokens=40",
                    "generation.seed=3", "runtime.peer_timeout_s=10"};
  return dsi::with_session(
      opts, [](dsi::Session& s) { (void)s.cfg.n_targets(s.world); },
      [](dsi::Session& s, dsi::Coordinator& coord) {
        int passed = 0, failed = 0;
        const int max_sp = std::min(6, s.world - 2);
        for (double a : {0.0, 0.5, 0.9, 1.0}) {
          for (int k : {1, 3, 5}) {
            dsi::RunConfig cfg = s.cfg;
            cfg.a = a;
            cfg.lookahead = k;
            cfg.mode = dsi::Mode::kNonSi;
            const auto ref = coord.run(cfg, 1).tokens;
            // The non-SI run itself must match the synthetic model decoded directly.
            dsi::SyntheticParams target{.seed = cfg.seed, .vocab = cfg.vocab};
            const auto direct = dsi::synthetic_reference(
                target, dsi::synthetic_prompt(cfg.seed, cfg.prompt_tokens, cfg.vocab),
                cfg.max_new_tokens);
            if (ref != direct) {
              ++failed;
              fmt::print("FAIL nonsi differs from direct decoding a={} k={}\n", a, k);
            }
            for (dsi::Mode mode : {dsi::Mode::kSi, dsi::Mode::kDsi}) {
              for (int sp = 1; sp <= max_sp; ++sp) {
                cfg.mode = mode;
                const auto got = coord.run(cfg, sp).tokens;
                if (got == ref) {
                  ++passed;
                } else {
                  ++failed;
                  fmt::print("FAIL {} sp={} k={} a={}: tokens differ from non-SI\n",
                             dsi::mode_name(mode), sp, k, a);
                }
              }
            }
            // runtime.adapt: the policy changes mode, k and SP at chain boundaries.
            for (bool drift : {false, true}) {
              cfg.mode = dsi::Mode::kDsi;
              cfg.adapt = true;
              if (drift) {
                cfg.a_phases = {0.9, 0.1, 0.9};
                cfg.phase_tokens = 12;
              }
              const auto got = coord.run(cfg, max_sp).tokens;
              cfg.adapt = false;
              cfg.a_phases.clear();
              if (got == ref) {
                ++passed;
              } else {
                ++failed;
                fmt::print("FAIL adaptive{} sp={} k={} a={}: tokens differ from non-SI\n",
                           drift ? " (drifting a)" : "", max_sp, k, a);
              }
            }
          }
        }
        fmt::print("world {}: {} passed, {} failed\n", s.world, passed, failed);
        return failed == 0 ? 0 : 1;
      });
}
