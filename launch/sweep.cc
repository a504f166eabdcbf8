// `dsi sweep`: non-SI, SI and DSI over a list of rank counts (SP = ranks - 2) and lookaheads
// in ONE MPI launch: the coordinator uses the first SP targets of the world, the others idle.
// For every run: measured latency per token, the closed form of docs/dsi.md, the simulated schedule
// on the same tokens (zero overhead) and the i.i.d. simulator's prediction (`dsi simulate`),
// speedups and losslessness; with --trees, SI and DSI with token trees of each shape too (no
// closed form or i.i.d. prediction: those model chains). Writes PREFIX.csv and PREFIX.json, then
// (rank 0, after MPI has finished) draws PREFIX.png with launch/plot_sweep.py. Bad input fails
// before any run.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "launch/commands.h"
#include "launch/session.h"
#include "sim/planner.h"
#include "sim/simulator.h"

namespace dsi::cli {
namespace {

using json = nlohmann::json;

// "2-10", "4" -> rank counts; throws ConfigError naming the bad item.
std::vector<int> parse_ranks(const std::vector<std::string>& items) {
  std::vector<int> out;
  for (const std::string& item : items) {
    int lo = 0, hi = 0;
    char dash = 0, extra = 0;
    std::stringstream ss(item);
    bool ok = static_cast<bool>(ss >> lo);
    if (ok && (ss >> dash)) {
      ok = dash == '-' && static_cast<bool>(ss >> hi) && !(ss >> extra);
    } else {
      hi = lo;
    }
    if (!ok || item.empty()) {
      throw ConfigError(
          fmt::format("--ranks item '{}' must be a number or a range like 2-10", item));
    }
    if (lo > hi)
      throw ConfigError(fmt::format("--ranks range '{}' is empty ({} > {})", item, lo, hi));
    if (lo < 2) {
      throw ConfigError(fmt::format("--ranks {}: a run needs at least 2 ranks (coordinator + "
                                    "1 target for non-SI; 3 for SI and DSI)",
                                    lo));
    }
    for (int r = lo; r <= hi; ++r) out.push_back(r);
  }
  return out;
}

double simulated_same_tokens(const RunConfig& cfg, int sp) {
  return simulate(sim_config(cfg, sp)).latency_per_token_ms;
}

std::string find_plot_script(const std::string& given) {
  if (!given.empty()) return given;
  if (const char* env = std::getenv("DSI_PLOT_SCRIPT")) return env;
  std::error_code ec;
  const auto exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    for (const auto& p :
         {exe.parent_path() / "../launch/plot_sweep.py", exe.parent_path() / "plot_sweep.py",
          exe.parent_path() / "../share/dsi/plot_sweep.py"}) {
      if (std::filesystem::exists(p)) return std::filesystem::weakly_canonical(p).string();
    }
  }
  return "launch/plot_sweep.py";
}

std::string shell_quote(const std::string& s) {
  std::string q = "'";
  for (char ch : s) q += ch == '\'' ? std::string("'\\''") : std::string(1, ch);
  return q + "'";
}

}  // namespace

int cmd_sweep(const CommonOptions& common, const SweepOptions& opts) {
  std::vector<int> sps;  // DSI SP degrees, ascending
  std::vector<int> ks;
  std::vector<std::vector<int>> trees;  // --trees
  bool coordinator = false;
  int rc = with_session(
      common,
      [&](Session& s) {
        if (s.cfg.engine != "synthetic") {
          throw ConfigError(
              fmt::format("dsi sweep drives the synthetic engine (engine: {})", s.cfg.engine));
        }
        if (s.cfg.temperature > 0) {
          throw ConfigError(fmt::format(
              "sampling.temperature = {}: dsi sweep measures greedy decoding (its token-equality "
              "check and its simulations are greedy); set sampling.temperature=0",
              s.cfg.temperature));
        }
        if (!opts.ranks.empty() && !opts.sp.empty())
          throw ConfigError("give --ranks or --sp, not both");
        std::vector<int> ranks;
        if (!opts.sp.empty()) {
          for (int sp : opts.sp) {
            if (sp < 1) throw ConfigError(fmt::format("--sp {}: SP must be at least 1", sp));
            ranks.push_back(sp + 2);
          }
        } else if (!opts.ranks.empty()) {
          ranks = parse_ranks(opts.ranks);
        } else {
          for (int r = 2; r <= s.world; ++r) ranks.push_back(r);  // every count the world allows
        }
        std::set<int> uniq(ranks.begin(), ranks.end());
        for (int r : uniq) {
          if (r > s.world) {
            throw ConfigError(fmt::format(
                "{} {} needs {} ranks (coordinator + drafter + {} targets), but the world has {} "
                "(launch with mpirun -np {} or srun -n {})",
                opts.sp.empty() ? "--ranks" : "--sp", opts.sp.empty() ? r : r - 2, r, r - 2,
                s.world, *uniq.rbegin(), *uniq.rbegin()));
          }
          if (r > 2) sps.push_back(r - 2);  // 2 ranks: non-SI only, which always runs
        }
        if (s.world < 3) {
          throw ConfigError(fmt::format("dsi sweep runs SI and DSI: it needs at least 3 ranks, the "
                                        "world has {} (launch with mpirun -np 3 or more)",
                                        s.world));
        }
        ks = opts.k.empty() ? std::vector<int>{s.cfg.lookahead} : opts.k;
        for (int k : ks) {
          if (k < 1 || k > 1024)
            throw ConfigError(fmt::format("-k {}: a lookahead must lie in [1, 1024]", k));
        }
        if (opts.tokens == 0 || opts.tokens < -1) {
          throw ConfigError(fmt::format("--tokens {}: must be at least 1", opts.tokens));
        }
        if (opts.sim_runs < 1)
          throw ConfigError(fmt::format("--sim-runs {}: must be at least 1", opts.sim_runs));
        if (!opts.trees.empty()) {
          trees = tree_rows(s.cfg, opts.trees, opts.tokens > 0 ? opts.tokens : s.cfg.max_new_tokens,
                            {s.cfg.temperature});
        }
        const std::string dir = std::filesystem::path(opts.out_prefix).parent_path().string();
        if (!dir.empty() && !std::filesystem::is_directory(dir)) {
          throw ConfigError(
              fmt::format("--out {}: folder '{}' does not exist", opts.out_prefix, dir));
        }
      },
      [&](Session& s, Coordinator& coord) {
        coordinator = true;
        const RunConfig& base = s.cfg;
        const int tokens = opts.tokens > 0 ? opts.tokens : base.max_new_tokens;
        const LatencyInputs in{.t_ms = base.t_ms,
                               .c_ms = base.c * base.t_ms,
                               .a = base.a,
                               .per_token_ms = base.per_token_ms};
        const PlanOptions po{.tokens = std::max(tokens, 200),
                             .runs = opts.sim_runs,
                             .seed = base.seed,
                             .queue = base.queue};
        const int n_runs = 1 + static_cast<int>((ks.size() + trees.size()) * (1 + sps.size())) +
                           (opts.adapt ? static_cast<int>(sps.size()) : 0);
        fmt::print("dsi sweep: synthetic engine, t = {} ms, c = {} t, a = {}, {} tokens per run, "
                   "k in {{{}}}, SP in {{{}}}, world {} ranks; {} runs\n",
                   base.t_ms, base.c, base.a, tokens, fmt::format("{}", fmt::join(ks, ",")),
                   fmt::format("{}", fmt::join(sps, ",")), s.world, n_runs);
        std::fflush(stdout);

        json rows = json::array();
        std::vector<Token> ref;
        double lat_non = 0;
        bool all_lossless = true;
        int run_no = 0;
        // adapt: runtime.adapt on, starting from DSI with lookahead k.
        // tree: token trees of this shape (k is its depth); empty: chains.
        auto one = [&](Mode m, int k, int sp, double lat_si, bool adapt = false,
                       const std::vector<int>& tree = {}) {
          RunConfig cfg = base;
          cfg.mode = m;
          cfg.adapt = adapt;
          cfg.lookahead = k;
          cfg.tree = tree;
          cfg.max_new_tokens = tokens;
          const int ranks = m == Mode::kNonSi ? 2 : sp + 2;
          RunReport r = coord.run(cfg, sp);
          if (m == Mode::kNonSi) {
            ref = r.tokens;
            lat_non = r.latency_per_token_ms;
          }
          const double meas = r.latency_per_token_ms;
          // The closed forms and the i.i.d. simulator model chains: 0 (n/a) on tree rows.
          double formula = tree.empty() ? ideal_latency_ms(m, in, k) : 0.0;
          if (adapt) {
            // the best closed form over the modes and lookaheads it may choose
            for (int kk = 1; kk <= std::max(8, k); ++kk) {
              for (Mode o : {Mode::kNonSi, Mode::kSi, Mode::kDsi})
                formula = std::min(formula, ideal_latency_ms(o, in, kk));
            }
          }
          const double sched = simulated_same_tokens(cfg, sp);
          // The i.i.d. simulator has no adaptive policy: 0 (n/a) on adaptive rows.
          const double iid =
              adapt || !tree.empty() ? 0.0 : simulate_iid(m, in, k, sp, po).latency_ms;
          const double per_verify = r.stats.tasks_completed > 0
                                        ? static_cast<double>(r.tokens.size()) /
                                              static_cast<double>(r.stats.tasks_completed)
                                        : 0.0;
          const char* name = adapt ? "adapt" : mode_name(m);
          const bool lossless = r.tokens == ref;
          all_lossless &= lossless;
          ++run_no;
          fmt::print("[{:2}/{}] {:>5}{} k={:<2} SP={:<2} ranks={:<2} meas {:8.3f} ms/token  "
                     "formula {:8.3f}  sim {:8.3f}  iid-sim {:8.3f}  eff {:5.3f}  vs non-SI "
                     "{:5.2f}x  acc {:.3f}  tok/verify {:.2f}  {}\n",
                     run_no, n_runs, name,
                     tree.empty() ? std::string() : " tree " + tree_shape_name(tree), k, sp, ranks,
                     meas, formula, sched, iid, sched / meas, lat_non / meas, r.acceptance_rate(),
                     per_verify, lossless ? "lossless" : "NOT LOSSLESS");
          std::fflush(stdout);
          rows.push_back({{"mode", name},
                          {"tree", tree_shape_name(tree)},
                          {"k", m == Mode::kNonSi ? 0 : k},
                          {"tokens_per_verification", per_verify},
                          {"sp", sp},
                          {"ranks", ranks},
                          {"gpus", ranks - 1},
                          {"tokens", r.tokens.size()},
                          {"latency_ms", meas},
                          {"formula_ms", formula},
                          {"sim_same_tokens_ms", sched},
                          {"sim_iid_ms", iid},
                          {"efficiency", sched / meas},
                          {"efficiency_formula", formula / meas},
                          {"speedup_vs_nonsi", lat_non / meas},
                          {"speedup_vs_si", lat_si > 0 ? lat_si / meas : 1.0},
                          {"sp_needed", m == Mode::kDsi ? dsi_sp_needed(in, k) : 1},
                          {"acceptance_rate", r.acceptance_rate()},
                          {"tasks_launched", r.stats.tasks_launched},
                          {"tasks_preempted", r.stats.tasks_preempted},
                          {"tasks_cancelled_queued", r.stats.tasks_cancelled_queued},
                          {"wasted_target_s", r.wasted_target_s()},
                          {"lossless", lossless}});
          if (adapt) {
            rows.back()["plan_changes"] = r.stats.plan_changes;
            rows.back()["tokens_nonsi"] = r.tokens_by_mode[static_cast<int>(Mode::kNonSi)];
            rows.back()["tokens_si"] = r.tokens_by_mode[static_cast<int>(Mode::kSi)];
            rows.back()["tokens_dsi"] = r.tokens_by_mode[static_cast<int>(Mode::kDsi)];
          }
          return meas;
        };
        one(Mode::kNonSi, ks.front(), 1, 0);
        for (int k : ks) {
          const double lat_si = one(Mode::kSi, k, 1, 0);
          rows.back()["speedup_vs_si"] = 1.0;
          for (int sp : sps) one(Mode::kDsi, k, sp, lat_si);
        }
        for (const auto& tree : trees) {
          const int k = static_cast<int>(tree.size());
          const double lat_si = one(Mode::kSi, k, 1, 0, false, tree);
          rows.back()["speedup_vs_si"] = 1.0;
          for (int sp : sps) one(Mode::kDsi, k, sp, lat_si, false, tree);
        }
        if (opts.adapt) {
          for (int sp : sps) one(Mode::kDsi, ks.front(), sp, 0, true);
        }

        // Queueing: each DSI row against the DSI row of the same k at the largest SP swept,
        // measured and simulated (same tokens), so a short SP's slowdown can be compared with
        // its prediction.
        for (auto& r : rows) {
          if (r["mode"] != "dsi") continue;
          for (const auto& top : rows) {
            if (top["mode"] == "dsi" && top["k"] == r["k"] && top["tree"] == r["tree"] &&
                top["sp"] == sps.back()) {
              r["slowdown_measured"] =
                  r["latency_ms"].get<double>() / top["latency_ms"].get<double>();
              r["slowdown_sim"] =
                  r["sim_same_tokens_ms"].get<double>() / top["sim_same_tokens_ms"].get<double>();
            }
          }
        }
        json out = {{"format", "dsi-sweep"},
                    {"version", 1},
                    {"config",
                     {{"path", common.config_path.empty() ? "defaults" : common.config_path},
                      {"overrides", common.overrides},
                      {"engine", base.engine},
                      {"t_ms", base.t_ms},
                      {"c", base.c},
                      {"c_ms", in.c_ms},
                      {"a", base.a},
                      {"per_token_ms", base.per_token_ms},
                      {"queue", queue_policy_name(base.queue)},
                      {"seed", base.seed},
                      {"tokens", tokens}}},
                    {"world", s.world},
                    {"lookaheads", ks},
                    {"sp", sps},
                    {"rows", rows}};
        const std::string json_path = opts.out_prefix + ".json",
                          csv_path = opts.out_prefix + ".csv";
        std::ofstream jf(json_path);
        jf << out.dump(1) << "\n";
        std::ofstream cf(csv_path);
        const std::vector<std::string> cols = {"mode",
                                               "tree",
                                               "k",
                                               "sp",
                                               "ranks",
                                               "gpus",
                                               "tokens",
                                               "latency_ms",
                                               "formula_ms",
                                               "sim_same_tokens_ms",
                                               "sim_iid_ms",
                                               "efficiency",
                                               "efficiency_formula",
                                               "speedup_vs_nonsi",
                                               "speedup_vs_si",
                                               "sp_needed",
                                               "acceptance_rate",
                                               "tokens_per_verification",
                                               "tasks_launched",
                                               "tasks_preempted",
                                               "tasks_cancelled_queued",
                                               "wasted_target_s",
                                               "slowdown_measured",
                                               "slowdown_sim",
                                               "lossless",
                                               "plan_changes",
                                               "tokens_nonsi",
                                               "tokens_si",
                                               "tokens_dsi"};
        cf << fmt::format("{}\n", fmt::join(cols, ","));
        for (const auto& r : rows) {
          std::vector<std::string> v;
          for (const auto& c : cols) {
            const json x = r.value(c, json());
            std::string f = x.is_string() ? x.get<std::string>() : x.is_null() ? "" : x.dump();
            if (f.find(',') != std::string::npos) f = '"' + f + '"';  // a tree: "3,2,1,1"
            v.push_back(std::move(f));
          }
          cf << fmt::format("{}\n", fmt::join(v, ","));
        }
        if (!jf || !cf) throw UsageError(fmt::format("cannot write {} / {}", json_path, csv_path));
        fmt::print("wrote {} and {}\n", csv_path, json_path);
        if (!all_lossless) {
          fmt::print(stderr, "dsi sweep: some runs were NOT lossless\n");
          return 1;
        }
        return 0;
      });
  if (!coordinator || rc != 0 || opts.no_plot) return rc;

  // MPI is finished: the plot runs in a child process without MPI around it.
  const std::string script = find_plot_script(opts.plot_script);
  const std::string cmd =
      fmt::format("{} {} {} {}", shell_quote(opts.python), shell_quote(script),
                  shell_quote(opts.out_prefix + ".json"), shell_quote(opts.out_prefix + ".png"));
  std::fflush(stdout);
  const int st = std::system(cmd.c_str());
  if (st != 0) {
    fmt::print(stderr,
               "dsi sweep: the plot failed ({}); CSV and JSON are written. Install "
               "python3-matplotlib or pass --python / --plot-script, or --no-plot\n",
               cmd);
    return 3;
  }
  return 0;
}

}  // namespace dsi::cli
