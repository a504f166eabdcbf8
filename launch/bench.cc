// `dsi bench`: non-SI, SI and DSI over a grid of (c, a, k, SP) with the synthetic engine in
// one launch. For every row: measured latency per token, the closed-form ideal of docs/dsi.md,
// the zero-overhead ideal of the same schedule (simulator), efficiency, speedups, and
// whether the tokens equal non-SI's; with --trees, SI and DSI with token trees of each shape
// too; with --drafters, SI and DSI with merged drafters. docs/benchmarks.md defines the
// columns.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <sstream>

#include "core/latency_model.h"
#include "launch/commands.h"
#include "launch/session.h"
#include "sim/simulator.h"

namespace dsi::cli {
namespace {

struct Point {
  double c, a;
  int k;
};

std::vector<Point> parse_grid(const std::string& s) {
  std::vector<Point> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    Point p{};
    char x, y;
    std::stringstream is(item);
    if (!(is >> p.c >> x >> p.a >> y >> p.k) || x != ':' || y != ':' || p.k < 1 || p.a < 0 ||
        p.a > 1 || p.c < 0) {
      throw ConfigError(
          fmt::format("--grid item '{}' must read c:a:k (c >= 0, 0 <= a <= 1, k >= 1)", item));
    }
    out.push_back(p);
  }
  if (out.empty()) throw ConfigError("--grid is empty");
  return out;
}

}  // namespace

int cmd_bench(const CommonOptions& common, const BenchOptions& opts) {
  std::vector<Point> grid;
  std::vector<int> sps;
  std::vector<std::vector<int>> trees;
  return with_session(
      common,
      [&](Session& s) {
        if (s.cfg.tensor_parallel()) {
          throw ConfigError(
              "dsi bench lays out single-rank targets; measure tensor-parallel groups "
              "(roles.target_tp, roles.drafter_tp) with dsi run or tests/bench/tp_bench");
        }
        grid = parse_grid(opts.grid);
        for (int sp : opts.sp) {
          if (sp < 1) throw ConfigError("--sp values must be at least 1");
          if (2 + sp > s.world) {
            throw ConfigError(fmt::format("--sp {} needs {} ranks (coordinator + drafter + {} "
                                          "targets), the world has {} (mpirun -np {})",
                                          sp, 2 + sp, sp, s.world, 2 + sp));
          }
          sps.push_back(sp);
        }
        if (opts.tokens < 1) throw ConfigError("--tokens must be at least 1");
        for (double t : opts.temperatures) {
          if (t < 0) throw ConfigError("--temperatures must not be negative");
        }
        if (!opts.trees.empty()) {
          trees = tree_rows(s.cfg, opts.trees, opts.tokens, opts.temperatures);
        }
        for (int n : opts.drafters) {
          RunConfig c = s.cfg;
          c.drafters = n;
          c.mode = Mode::kSi;
          if (n < 2 || n > kMaxDrafters) {
            throw ConfigError(fmt::format("--drafters {}: counts lie in [2, {}]", n, kMaxDrafters));
          }
          try {
            check_drafters_config(c);
          } catch (const ConfigError& e) {
            throw ConfigError(fmt::format("--drafters {}: {}", n, e.message()));
          }
          for (int sp : sps) {
            if (1 + n + sp > s.world) {
              throw ConfigError(fmt::format(
                  "--drafters {} with --sp {} needs {} ranks (coordinator + {} drafters + {} "
                  "targets), the world has {}",
                  n, sp, 1 + n + sp, n, sp, s.world));
            }
          }
        }
        check_model_paths(s.cfg);
      },
      [&](Session& s, Coordinator& coord) {
        nlohmann::json rows = nlohmann::json::array();
        const bool synthetic = s.cfg.engine == "synthetic";
        if (synthetic) {
          fmt::print("dsi bench: synthetic engine, t = {} ms, {} tokens per run, {} ranks\n",
                     opts.t_ms, opts.tokens, s.world);
        } else {
          // A real model: the grid's c and a are properties of the model pair; k from the config.
          fmt::print("dsi bench: {} (drafter {} layers), k = {}, {} tokens per run, {} ranks\n",
                     s.cfg.model_path,
                     s.cfg.drafter_layers.empty() ? std::string("all")
                                                  : std::to_string(s.cfg.drafter_layers.size()),
                     s.cfg.lookahead, opts.tokens, s.world);
          grid = {Point{0, 0, s.cfg.lookahead}};
        }
        // Rank 0's view of how ranks wait: the overhead columns depend on it.
        fmt::print("control plane: {}\n", s.channel->describe());
        const std::string head = fmt::format(
            "{:>5} {:>4} {:>2} {:>4} {:>6} {:>9} {:>2} {:>3} {:>10} {:>10} {:>10} {:>6} "
            "{:>7} {:>6} {:>8} {:>8} {:>6} {:>6} {:>7} {:>8}",
            "c", "a", "k", "T", "mode", "tree", "dr", "SP", "meas_ms", "ideal_ms", "sched_ms",
            "eff", "ovh_us", "eff_f", "vs_SI", "vs_nonSI", "acc", "tok/v", "preempt", "lossless");
        fmt::print("{}\n{}\n", head, std::string(head.size(), '-'));
        bool all_ok = true;
        for (const Point& p : grid) {
          for (double temp : opts.temperatures) {
            RunConfig base = s.cfg;
            if (synthetic) {
              base.t_ms = base.ttft_ms = opts.t_ms;
              base.c = p.c;
              base.a = p.a;
            }
            base.lookahead = p.k;
            base.max_new_tokens = opts.tokens;
            base.temperature = temp;
            double lat_non = 0, lat_si = 0;
            std::vector<Token> ref, dsi_first;
            // adapt: runtime.adapt on (the policy picks the mode, k and SP from base's start).
            // tree: token trees of this shape (k is its depth); empty: chains.
            // drafters: merged drafters (roles.drafters).
            auto one = [&](Mode m, int sp, bool adapt = false, const std::vector<int>& tree = {},
                           int drafters = 1) {
              RunConfig cfg = base;
              cfg.mode = m;
              cfg.adapt = adapt;
              cfg.tree = tree;
              cfg.drafters = drafters;
              if (!tree.empty()) cfg.lookahead = static_cast<int>(tree.size());
              RunReport r = coord.run(cfg, sp);
              if (m == Mode::kNonSi) {
                ref = r.tokens;
                lat_non = r.latency_per_token_ms;
              }
              if (m == Mode::kSi && tree.empty() && drafters == 1) lat_si = r.latency_per_token_ms;
              double id = 0, sim = 0;
              // The check: greedy runs, and sampled runs under the Gumbel coupling, equal
              // non-SI's tokens; sampled synthetic runs also equal the simulator's (a pure
              // function of the seed); under the residual coupling sampled real-model DSI runs
              // agree across SP degrees (their text depends on k, not on SP).
              const bool coupled = temp <= 0 || cfg.coupling == "gumbel";
              std::string check = "n/a";
              bool ok = true;
              if (synthetic) {
                // Adaptive: the ideal is the best mode's closed form at this k. Trees: none (the
                // closed forms are for chains).
                const LatencyInputs in{.t_ms = opts.t_ms, .c_ms = p.c * opts.t_ms, .a = p.a};
                id = tree.empty() ? ideal_latency_ms(m, in, p.k) : 0.0;
                if (adapt) {
                  for (Mode o : {Mode::kNonSi, Mode::kSi})
                    id = std::min(id, ideal_latency_ms(o, in, p.k));
                }
                const SimResult sr = simulate(sim_config(cfg, sp));
                sim = sr.latency_per_token_ms;
                ok = (temp <= 0 || r.tokens == sr.tokens) && (!coupled || r.tokens == ref);
                check = ok ? "yes" : "NO";
              } else if (coupled) {
                ok = r.tokens == ref;
                check = ok ? "yes" : "NO";
              } else if (m == Mode::kDsi) {
                if (dsi_first.empty()) dsi_first = r.tokens;
                ok = r.tokens == dsi_first;
                check = ok ? "same" : "DIFF";
              }
              all_ok &= ok;
              const double lat = r.latency_per_token_ms;
              const double eff = synthetic ? sim / lat : 0, eff_f = synthetic ? id / lat : 0;
              // Orchestration overhead per token: measured against the zero-overhead schedule.
              const double overhead_us = synthetic ? (lat - sim) * 1000 : 0;
              const double vs_si = m == Mode::kNonSi ? 0.0 : lat_si / lat;
              // Tokens committed per verification (accepted drafts + the target's own).
              const double per_verify = r.stats.tasks_completed > 0
                                            ? static_cast<double>(r.tokens.size()) /
                                                  static_cast<double>(r.stats.tasks_completed)
                                            : 0.0;
              const std::string tree_name = tree.empty() ? "-" : tree_shape_name(tree);
              fmt::print("{:5.2f} {:4.2f} {:2} {:4.2f} {:>6} {:>9} {:2} {:3} {:10.3f} {:10.3f} "
                         "{:10.3f} {:6.3f} {:7.1f} {:6.3f} {:8.2f} {:8.2f} {:6.3f} {:6.2f} {:7} "
                         "{:>8}\n",
                         p.c, p.a, cfg.lookahead, temp, adapt ? "adapt" : mode_name(m), tree_name,
                         cfg.n_drafters(), sp, lat, id, sim, eff, overhead_us, eff_f, vs_si,
                         lat_non / lat, r.acceptance_rate(), per_verify, r.stats.tasks_preempted,
                         check);
              std::fflush(stdout);
              rows.push_back({{"c", p.c},
                              {"a", p.a},
                              {"k", cfg.lookahead},
                              {"tree", tree.empty() ? "" : tree_shape_name(tree)},
                              {"tokens_per_verification", per_verify},
                              {"drafters", cfg.n_drafters()},
                              {"siblings_committed", r.stats.siblings_committed},
                              {"temperature", temp},
                              {"mode", adapt ? "adapt" : mode_name(m)},
                              {"sp", sp},
                              {"engine", cfg.engine},
                              {"t_ms", synthetic ? opts.t_ms : 0.0},
                              {"tokens", r.tokens.size()},
                              {"latency_ms", lat},
                              {"ideal_formula_ms", id},
                              {"ideal_schedule_ms", sim},
                              {"efficiency", eff},
                              {"overhead_us_per_token", overhead_us},
                              {"efficiency_formula", eff_f},
                              {"speedup_vs_si", vs_si},
                              {"speedup_vs_nonsi", lat_non / lat},
                              {"acceptance_rate", r.acceptance_rate()},
                              {"tasks_preempted", r.stats.tasks_preempted},
                              {"tasks_cancelled_queued", r.stats.tasks_cancelled_queued},
                              {"wasted_target_s", r.wasted_target_s()},
                              {"check", check}});
              if (adapt) {
                const auto& tm = r.tokens_by_mode;
                fmt::print(
                    "      adapt: {} plan changes; tokens by mode: non-SI {}, SI {}, DSI {}\n",
                    r.stats.plan_changes, tm[0], tm[1], tm[2]);
                rows.back()["plan_changes"] = r.stats.plan_changes;
                rows.back()["tokens_by_mode"] = {{"nonsi", tm[0]}, {"si", tm[1]}, {"dsi", tm[2]}};
              }
            };
            one(Mode::kNonSi, 1);
            one(Mode::kSi, 1);
            for (int sp : sps) one(Mode::kDsi, sp);
            for (const auto& tree : trees) {
              one(Mode::kSi, 1, false, tree);
              for (int sp : sps) one(Mode::kDsi, sp, false, tree);
            }
            for (int n : opts.drafters) {
              one(Mode::kSi, 1, false, {}, n);
              for (int sp : sps) one(Mode::kDsi, sp, false, {}, n);
            }
            if (opts.adapt && temp > 0 && base.coupling == "residual") {
              fmt::print("      adapt: skipped (the residual coupling's text depends on k)\n");
            } else if (opts.adapt) {
              one(Mode::kDsi, *std::max_element(sps.begin(), sps.end()), true);
            }
          }
        }
        nlohmann::json out = {{"tokens", opts.tokens}, {"world", s.world}, {"rows", rows}};
        if (!opts.json_path.empty()) {
          std::ofstream f(opts.json_path);
          f << out.dump(1) << "\n";
          fmt::print("JSON written to {}\n", opts.json_path);
        } else {
          fmt::print("{}\n", out.dump());
        }
        if (!all_ok) {
          fmt::print(stderr, "dsi bench: some runs failed their check (NOT lossless)\n");
          return 1;
        }
        return 0;
      });
}

}  // namespace dsi::cli
