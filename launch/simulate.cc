// `dsi simulate`: predicts non-SI / SI / DSI latency per token of a model pair (t, c, a, by
// hand or from a `dsi profile` JSON) with the closed forms of docs/dsi.md and with the event-driven
// simulation of the real scheduler (i.i.d. acceptance, queueing when SP is short), and
// recommends a lookahead k and an SP degree. A plain process: no MPI.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "core/config.h"
#include "launch/commands.h"
#include "sim/planner.h"

namespace dsi::cli {
namespace {

using json = nlohmann::json;

// The model pair's latencies: a profile first, then whatever the command line sets.
LatencyInputs inputs(const SimulateOptions& o, json& source) {
  LatencyInputs in{.t_ms = o.t_ms,
                   .c_ms = o.c_ms >= 0 ? o.c_ms : o.c * o.t_ms,
                   .a = o.a,
                   .per_token_ms = o.per_token_ms,
                   .ranks = o.ranks};
  source = {{"kind", "command line"}};
  if (!o.profile_path.empty()) {
    std::ifstream f(o.profile_path);
    if (!f) throw UsageError(fmt::format("cannot read profile '{}'", o.profile_path));
    json p;
    try {
      p = json::parse(f);
    } catch (const json::exception& e) {
      throw UsageError(fmt::format("profile '{}' is not JSON: {}", o.profile_path, e.what()));
    }
    if (p.value("format", "") != "dsi-profile" || !p.contains("simulate")) {
      throw UsageError(fmt::format("'{}' is not a dsi profile (no \"format\": \"dsi-profile\" "
                                   "with a \"simulate\" block; make one with dsi profile)",
                                   o.profile_path));
    }
    const json& s = p["simulate"];
    try {
      if (!o.t_set) in.t_ms = s.at("t_ms").get<double>();
      if (!o.c_set) in.c_ms = s.at("c_ms").get<double>();
      if (!o.a_set) in.a = s.at("a").get<double>();
      if (!o.pt_set) in.per_token_ms = s.value("per_token_ms", 0.0);
      if (!o.ranks_set) in.ranks = s.value("ranks", std::vector<double>{});
    } catch (const json::exception& e) {
      throw UsageError(fmt::format("profile '{}': {}", o.profile_path, e.what()));
    }
    source = {{"kind", "profile"}, {"path", o.profile_path}};
  }
  if (o.c_set && o.c_ms < 0) in.c_ms = o.c * in.t_ms;  // --c is a fraction of the final t
  if (!(in.t_ms > 0)) throw UsageError(fmt::format("t must be > 0 ms, got {}", in.t_ms));
  if (!(in.c_ms >= 0)) throw UsageError(fmt::format("c must be >= 0, got {} ms", in.c_ms));
  if (!(in.a >= 0 && in.a <= 1))
    throw UsageError(fmt::format("a must lie in [0, 1], got {}", in.a));
  if (!(in.per_token_ms >= 0)) {
    throw UsageError(fmt::format("per-token cost must be >= 0, got {}", in.per_token_ms));
  }
  double sum = in.a;
  for (double r : in.ranks) {
    if (!(r >= 0)) throw UsageError(fmt::format("--ranks: a probability must be >= 0, got {}", r));
    sum += r;
  }
  if (sum > 1 + 1e-9) {
    throw UsageError(fmt::format(
        "--ranks: a ({}) and the ranks' probabilities sum to {}, more than 1", in.a, sum));
  }
  return in;
}

// --tp "N:T,...": (ranks per target group, its forward latency in ms).
std::vector<std::pair<int, double>> parse_tp(const std::string& text) {
  std::vector<std::pair<int, double>> out;
  if (text.empty()) return out;
  size_t at = 0;
  while (at <= text.size()) {
    const size_t comma = std::min(text.find(',', at), text.size());
    const std::string item = text.substr(at, comma - at);
    const size_t colon = item.find(':');
    int n = 0;
    double t = 0;
    try {
      size_t used = 0;
      if (colon == std::string::npos) throw std::invalid_argument("no colon");
      n = std::stoi(item.substr(0, colon), &used);
      if (used != colon) throw std::invalid_argument("trailing");
      const std::string ts = item.substr(colon + 1);
      t = std::stod(ts, &used);
      if (used != ts.size()) throw std::invalid_argument("trailing");
    } catch (const std::exception&) {
      throw UsageError(fmt::format("--tp: '{}' must read N:T (ranks per target : its forward in "
                                   "ms), e.g. 2:11.5",
                                   item));
    }
    if (n < 1 || !(t > 0)) {
      throw UsageError(fmt::format("--tp: '{}' needs N >= 1 ranks and T > 0 ms", item));
    }
    out.emplace_back(n, t);
    at = comma + 1;
  }
  return out;
}

}  // namespace

int cmd_simulate(const SimulateOptions& o) {
  try {
    json source;
    const LatencyInputs in = inputs(o, source);
    for (int k : o.k)
      if (k < 1) throw UsageError(fmt::format("-k {}: a lookahead must be >= 1", k));
    for (int sp : o.sp)
      if (sp < 1) throw UsageError(fmt::format("--sp {}: SP must be >= 1", sp));
    if (o.tokens < 1 || o.runs < 1) throw UsageError("--tokens and --runs must be >= 1");
    if (o.max_k < 1 || o.max_sp < 1) throw UsageError("--max-k and --max-sp must be >= 1");
    const auto tps = parse_tp(o.tp);
    if (o.drafter_tp < 1) throw UsageError("--drafter-tp must be >= 1");
    const auto queue = parse_queue_policy(o.queue);
    if (!queue) throw UsageError(fmt::format("--queue {}: must be newest or fifo", o.queue));
    const PlanOptions po{
        .tokens = o.tokens, .runs = o.runs, .seed = static_cast<uint64_t>(o.seed), .queue = *queue};

    json rows = json::array();
    const double non_f = ideal_latency_ms(Mode::kNonSi, in, 1);
    const double non_s = simulate_iid(Mode::kNonSi, in, 1, 1, po).latency_ms;
    const std::string head =
        fmt::format("{:>3} {:>4} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>6} {:>7} {:>7} {:>8}",
                    "k", "SP", "nonsi_f", "si_f", "dsi_f", "nonsi_sim", "si_sim", "dsi_sim",
                    "sim/f", "SPneed", "slowdn", "vs_SI", "vs_nonSI");
    if (!o.json) {
      fmt::print("dsi simulate: t = {:.3f} ms (+{:.4f} ms per token), c = {:.3f} ms ({:.3f} t), "
                 "a = {:.3f}; {} runs x {} tokens, i.i.d. acceptance{}\n",
                 in.t_ms, in.per_token_ms, in.c_ms, in.c_ms / in.t_ms, in.a, o.runs, o.tokens,
                 o.profile_path.empty() ? "" : ", from " + o.profile_path);
      fmt::print("latencies in ms per token; _f closed form (enough servers), _sim simulated "
                 "scheduler\n{}\n{}\n",
                 head, std::string(head.size(), '-'));
    }
    for (int k : o.k) {
      const double si_f = ideal_latency_ms(Mode::kSi, in, k);
      const double dsi_f = ideal_latency_ms(Mode::kDsi, in, k);
      const double si_s = simulate_iid(Mode::kSi, in, k, 1, po).latency_ms;
      const int need = dsi_sp_needed(in, k);
      // "Ample": enough servers that no task ever waits (capped for c -> 0).
      const int ample = std::min(need, 256) + 1;
      const double dsi_ample = simulate_iid(Mode::kDsi, in, k, ample, po).latency_ms;
      for (int sp : o.sp) {
        const SimEstimate e = simulate_iid(Mode::kDsi, in, k, sp, po);
        const double slow = e.latency_ms / dsi_ample;
        if (!o.json) {
          fmt::print("{:3} {:4} {:8.3f} {:9.3f} {:9.3f} {:9.3f} {:9.3f} {:9.3f} {:9.3f} {:>6} "
                     "{:7.3f} {:7.2f} {:8.2f}\n",
                     k, sp, non_f, si_f, dsi_f, non_s, si_s, e.latency_ms, e.latency_ms / dsi_f,
                     need >= 1 << 20 ? std::string("inf") : std::to_string(need), slow,
                     si_s / e.latency_ms, non_s / e.latency_ms);
        }
        rows.push_back({{"k", k},
                        {"sp", sp},
                        {"nonsi_formula_ms", non_f},
                        {"si_formula_ms", si_f},
                        {"dsi_formula_ms", dsi_f},
                        {"nonsi_sim_ms", non_s},
                        {"si_sim_ms", si_s},
                        {"dsi_sim_ms", e.latency_ms},
                        {"dsi_sim_ample_ms", dsi_ample},
                        {"sp_needed", need},
                        {"queue_slowdown", slow},
                        {"speedup_vs_si", si_s / e.latency_ms},
                        {"speedup_vs_nonsi", non_s / e.latency_ms},
                        {"preempted_per_token", e.preempted_per_token},
                        {"cancelled_queued_per_token", e.cancelled_queued_per_token},
                        {"target_busy_ms_per_token", e.target_busy_ms_per_token},
                        {"wasted_target_ms_per_token", e.wasted_ms_per_token}});
      }
    }

    // Token trees: SI and DSI with each shape at every SP of the table (the closed forms are
    // for chains).
    std::vector<std::vector<int>> trees;
    if (!o.trees.empty()) {
      try {
        trees = parse_tree_shapes(o.trees, "--trees");
      } catch (const ConfigError& e) {
        throw UsageError(std::string(e.message()));
      }
    }
    json tree_rows = json::array();
    if (!trees.empty() && !o.json) {
      fmt::print("\ntoken trees (ranks 2.. of the target's token among the drafter's: {}):\n{:>9} "
                 "{:>4} {:>9} {:>9} {:>7} {:>7} {:>8}\n",
                 in.ranks.empty() ? std::string("none given")
                                  : fmt::format("{}", fmt::join(in.ranks, ", ")),
                 "tree", "SP", "si_sim", "dsi_sim", "tok/v", "vs_SI", "vs_nonSI");
    }
    for (const auto& tree : trees) {
      const int k = static_cast<int>(tree.size());
      const SimEstimate si = simulate_iid(Mode::kSi, in, k, 1, po, tree);
      for (int sp : o.sp) {
        const SimEstimate e = simulate_iid(Mode::kDsi, in, k, sp, po, tree);
        if (!o.json) {
          fmt::print("{:>9} {:4} {:9.3f} {:9.3f} {:7.2f} {:7.2f} {:8.2f}\n", tree_shape_name(tree),
                     sp, si.latency_ms, e.latency_ms, si.tokens_per_verification,
                     si.latency_ms / e.latency_ms, non_s / e.latency_ms);
        }
        tree_rows.push_back({{"tree", tree_shape_name(tree)},
                             {"k", k},
                             {"sp", sp},
                             {"si_sim_ms", si.latency_ms},
                             {"si_tokens_per_verification", si.tokens_per_verification},
                             {"dsi_sim_ms", e.latency_ms},
                             {"speedup_vs_si", si.latency_ms / e.latency_ms},
                             {"speedup_vs_nonsi", non_s / e.latency_ms}});
      }
    }

    // The scan uses fewer runs: it ranks configurations rather than reporting them.
    PlanOptions scan = po;
    scan.runs = std::max(1, o.runs / 4);
    const Recommendation r = recommend(in, o.max_k, o.max_sp, o.tolerance, scan);
    const double rec_ms =
        simulate_iid(Mode::kDsi, in, r.recommended.k, r.recommended.sp, po).latency_ms;
    const double best_ms = simulate_iid(Mode::kDsi, in, r.best.k, r.best.sp, po).latency_ms;
    const double si_best = simulate_iid(Mode::kSi, in, r.si_k, 1, po).latency_ms;
    json rec = {{"k", r.recommended.k},
                {"sp", r.recommended.sp},
                {"ranks", r.recommended.sp + 2},
                {"dsi_ms", rec_ms},
                {"best_k", r.best.k},
                {"best_sp", r.best.sp},
                {"best_dsi_ms", best_ms},
                {"si_k", r.si_k},
                {"si_ms", si_best},
                {"nonsi_ms", non_s},
                {"speedup_vs_si", si_best / rec_ms},
                {"speedup_vs_nonsi", non_s / rec_ms},
                {"tolerance", o.tolerance},
                {"scanned", {{"max_k", o.max_k}, {"max_sp", o.max_sp}, {"runs", scan.runs}}}};
    // The chains' plan against each tree shape at its own best SP: the planner's choice of
    // chain or tree.
    std::string tree_text;
    if (!trees.empty()) {
      json tplans = json::array();
      int win = -1;
      double win_ms = rec_ms * (1 - o.tolerance);
      for (const TreePlan& p : recommend_trees(in, trees, o.max_sp, o.tolerance, scan)) {
        const int k = static_cast<int>(p.tree.size());
        const double ms = simulate_iid(Mode::kDsi, in, k, p.sp, po, p.tree).latency_ms;
        tree_text += fmt::format(
            "  DSI tree [{}] at SP = {} ({} ranks): {:.3f} ms/token ({:.2f}x the chains' plan); SI "
            "with it {:.3f}\n",
            tree_shape_name(p.tree), p.sp, p.sp + 2, ms, rec_ms / ms, p.si_ms);
        if (ms < win_ms) {
          win = static_cast<int>(tplans.size());
          win_ms = ms;
        }
        tplans.push_back({{"tree", tree_shape_name(p.tree)},
                          {"sp", p.sp},
                          {"dsi_ms", ms},
                          {"si_ms", p.si_ms},
                          {"vs_chains", rec_ms / ms}});
      }
      rec["choice"] =
          win < 0 ? std::string("chains") : "tree " + tplans[win]["tree"].get<std::string>();
      rec["trees"] = tplans;
      tree_text += fmt::format("  choice: {}\n", rec["choice"].get<std::string>());
    }
    if (!o.json) {
      fmt::print("\nrecommendation (scan k = 1..{}, SP = 1..{}, smallest SP within {:.1f}% of the "
                 "best):\n  DSI k = {}, SP = {} ({} ranks): {:.3f} ms/token; best seen k = {}, "
                 "SP = {}: {:.3f}\n  SI at its best k = {}: {:.3f} ms/token; non-SI {:.3f}; "
                 "speedup {:.2f}x vs SI, {:.2f}x vs non-SI\n",
                 o.max_k, o.max_sp, 100 * o.tolerance, r.recommended.k, r.recommended.sp,
                 r.recommended.sp + 2, rec_ms, r.best.k, r.best.sp, best_ms, r.si_k, si_best, non_s,
                 si_best / rec_ms, non_s / rec_ms);
      fmt::print("{}", tree_text);
      if (rec_ms > 0.99 * std::min(non_s, si_best)) {
        fmt::print("  note: DSI gains less than 1% here over {}; the extra ranks buy nothing\n",
                   non_s <= si_best ? "non-SI" : "SI");
      }
    }
    // The frontier: the best k at every SP scanned, to trade ranks for latency.
    json frontier = json::array();
    std::string frontier_text;
    for (int sp = 1; sp <= o.max_sp; ++sp) {
      const PlanPoint* b = nullptr;
      for (const PlanPoint& p : r.grid) {
        if (p.sp == sp && (!b || p.dsi_ms < b->dsi_ms)) b = &p;
      }
      if (!b) continue;
      frontier.push_back({{"sp", sp},
                          {"k", b->k},
                          {"dsi_sim_ms", b->dsi_ms},
                          {"vs_best", b->dsi_ms / r.best.dsi_ms}});
      frontier_text +=
          fmt::format("{}SP {}: k {} {:.3f}", sp == 1 ? "" : ", ", sp, b->k, b->dsi_ms);
    }
    if (!o.json) fmt::print("  best k per SP (ms/token, {} runs): {}\n", scan.runs, frontier_text);
    // Tensor-parallel targets: t per group, ranks 1 + drafter group + SP x N.
    json tp_rows = json::array();
    if (!tps.empty()) {
      if (!o.json) {
        fmt::print("\ntensor-parallel targets (t per group of N ranks, drafter group {} ranks; "
                   "ms/token):\n{:>3} {:>8} {:>3} {:>4} {:>5} {:>9} {:>9} {:>9} {:>8}\n",
                   o.drafter_tp, "N", "t_ms", "k", "SP", "ranks", "nonsi_sim", "si_sim", "dsi_sim",
                   "vs_nonSI");
      }
      std::map<int, json> best_by_ranks;
      for (const auto& [n, t] : tps) {
        LatencyInputs g = in;
        g.t_ms = t;
        const double g_non = simulate_iid(Mode::kNonSi, g, 1, 1, po).latency_ms;
        for (int k : o.k) {
          const double g_si = simulate_iid(Mode::kSi, g, k, 1, po).latency_ms;
          for (int sp : o.sp) {
            const double g_dsi = simulate_iid(Mode::kDsi, g, k, sp, po).latency_ms;
            const int ranks = 1 + o.drafter_tp + sp * n;
            json row = {{"tp", n},           {"t_ms", t},          {"k", k},
                        {"sp", sp},          {"ranks", ranks},     {"nonsi_sim_ms", g_non},
                        {"si_sim_ms", g_si}, {"dsi_sim_ms", g_dsi}};
            if (!o.json) {
              fmt::print("{:3} {:8.3f} {:3} {:4} {:5} {:9.3f} {:9.3f} {:9.3f} {:8.2f}\n", n, t, k,
                         sp, ranks, g_non, g_si, g_dsi, g_non / g_dsi);
            }
            auto it = best_by_ranks.find(ranks);
            if (it == best_by_ranks.end() || g_dsi < it->second["dsi_sim_ms"].get<double>()) {
              best_by_ranks[ranks] = row;
            }
            tp_rows.push_back(std::move(row));
          }
        }
      }
      if (!o.json) {
        std::string line;
        for (const auto& [ranks, row] : best_by_ranks) {
          line += fmt::format("\n  {} ranks: TP {} x SP {}, k {}: {:.3f}", ranks,
                              row["tp"].get<int>(), row["sp"].get<int>(), row["k"].get<int>(),
                              row["dsi_sim_ms"].get<double>());
        }
        fmt::print("  best DSI split at each rank count:{}\n", line);
      }
    }
    json grid = json::array();
    for (const PlanPoint& p : r.grid)
      grid.push_back({{"k", p.k}, {"sp", p.sp}, {"dsi_sim_ms", p.dsi_ms}});
    json out = {{"inputs",
                 {{"t_ms", in.t_ms},
                  {"c_ms", in.c_ms},
                  {"a", in.a},
                  {"per_token_ms", in.per_token_ms},
                  {"ranks", in.ranks},
                  {"source", source}}},
                {"tokens", o.tokens},
                {"runs", o.runs},
                {"seed", o.seed},
                {"queue", o.queue},
                {"model", "iid"},
                {"rows", rows},
                {"tree_rows", tree_rows},
                {"tp_rows", tp_rows},
                {"recommendation", rec},
                {"frontier", frontier},
                {"scan", grid}};
    if (o.json) fmt::print("{}\n", out.dump());
    if (!o.json_path.empty()) {
      std::ofstream f(o.json_path);
      if (!f) throw UsageError(fmt::format("cannot write '{}'", o.json_path));
      f << out.dump(1) << "\n";
      if (!o.json) fmt::print("JSON written to {}\n", o.json_path);
    }
    return 0;
  } catch (const UsageError& e) {
    fmt::print(stderr, "dsi simulate: error: {}\n", e.what());
    return 2;
  }
}

}  // namespace dsi::cli
