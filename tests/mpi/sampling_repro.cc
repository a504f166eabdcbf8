// MPI test: speculative sampling over MPI is reproducible. For both couplings and temperatures
// 0.7 and 1.0, DSI gives the same tokens for SP 1 .. min(4, world-2) and over 5 repeated runs,
// and DSI and SI both give exactly what the virtual-time simulator computes for the seed; under
// the Gumbel coupling they also give non-SI's tokens.
#include <fmt/format.h>

#include "launch/session.h"
#include "sim/simulator.h"

namespace {

std::vector<dsi::Token> predicted(const dsi::RunConfig& cfg, int sp) {
  return dsi::simulate(dsi::sim_config(cfg, sp)).tokens;
}

}  // namespace

int main() {
  dsi::SessionOptions opts;
  opts.overrides = {"synthetic.t_ms=2",         "synthetic.c=0.2",
                    "synthetic.a=0.7",          "generation.max_new_tokens=40",
                    "generation.seed=17",       "dsi.lookahead=3",
                    "runtime.peer_timeout_s=10"};
  return dsi::with_session(
      opts, [](dsi::Session& s) { (void)s.cfg.n_targets(s.world); },
      [](dsi::Session& s, dsi::Coordinator& coord) {
        int passed = 0, failed = 0;
        auto check = [&](bool ok, const std::string& what) {
          ok ? ++passed : ++failed;
          if (!ok) fmt::print("FAIL {}\n", what);
        };
        for (const char* coupling : {"gumbel", "residual"})
          for (double temp : {0.7, 1.0}) {
            dsi::RunConfig cfg = s.cfg;
            cfg.temperature = temp;
            cfg.coupling = coupling;
            cfg.mode = dsi::Mode::kNonSi;
            const std::vector<dsi::Token> non_si = coord.run(cfg, 1).tokens;
            check(non_si == predicted(cfg, 1),
                  fmt::format("nonsi T={} differs from the simulator", temp));
            for (dsi::Mode mode : {dsi::Mode::kSi, dsi::Mode::kDsi}) {
              cfg.mode = mode;
              const int max_sp = mode == dsi::Mode::kSi ? 1 : std::min(4, s.world - 2);
              std::vector<dsi::Token> first;
              for (int sp = 1; sp <= max_sp; ++sp) {
                for (int rep = 0; rep < 5; ++rep) {
                  auto r = coord.run(cfg, sp);
                  if (first.empty()) {
                    first = r.tokens;
                    check(r.tokens == predicted(cfg, sp),
                          fmt::format("{} T={} differs from the simulator", dsi::mode_name(mode),
                                      temp));
                  }
                  check(r.tokens == first,
                        fmt::format("{} T={} sp={} run {} differs from the first run",
                                    dsi::mode_name(mode), temp, sp, rep));
                  if (cfg.coupling == "gumbel") {
                    check(r.tokens == non_si,
                          fmt::format("{} T={} sp={} (gumbel) differs from non-SI",
                                      dsi::mode_name(mode), temp, sp));
                  }
                }
              }
            }
            if (cfg.coupling == "gumbel") {
              // Adaptive: whatever it switches to, the text is the seed's.
              cfg.mode = dsi::Mode::kDsi;
              cfg.adapt = true;
              check(coord.run(cfg, std::min(4, s.world - 2)).tokens == non_si,
                    fmt::format("adaptive T={} (gumbel) differs from non-SI", temp));
              cfg.adapt = false;
            }
          }
        fmt::print("world {}: {} passed, {} failed\n", s.world, passed, failed);
        return failed == 0 ? 0 : 1;
      });
}
