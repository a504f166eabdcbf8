// `dsi run`: one generation with the configured mode; summary, JSON and trace on rank 0.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <fstream>

#include "launch/commands.h"
#include "runtime/mpi_session.h"

namespace dsi::cli {

namespace {
void write_json(const std::string& path, const nlohmann::json& j) {
  std::ofstream out(path);
  if (!out) throw std::runtime_error(fmt::format("cannot write '{}'", path));
  out << j.dump(1) << "\n";
}
}  // namespace

int cmd_run(const CommonOptions& common, const RunOptions& opts) {
  int n_targets = 0;
  return with_session(
      common, [&](Session& s) { n_targets = s.cfg.n_targets(s.world); },
      [&](Session& s, Coordinator& coord) {
        if (!opts.json) {
          fmt::print("dsi: {} ranks: 1 coordinator, {} drafter, {} targets; mode {}, k {}\n",
                     s.world, s.cfg.n_drafters(), n_targets, mode_name(s.cfg.mode),
                     s.cfg.lookahead);
        }
        RunReport rep = coord.run(s.cfg, n_targets);
        const auto summary = summary_json(rep);
        if (opts.json) {
          fmt::print("{}\n", summary.dump());
        } else {
          fmt::print("generated ids: {}\n", fmt::join(rep.tokens, " "));
          fmt::print("{}", summary_text(rep));
        }
        if (!opts.json_path.empty()) write_json(opts.json_path, summary);
        if (!opts.trace_path.empty()) {
          write_json(opts.trace_path, trace_json(rep));
          if (!opts.json) fmt::print("trace written to {}\n", opts.trace_path);
        }
        return 0;
      });
}

}  // namespace dsi::cli
