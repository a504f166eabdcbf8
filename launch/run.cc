// `dsi run`: one generation with the configured mode; summary, JSON and trace on rank 0.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <filesystem>
#include <fstream>

#include "model/tokenizer/tokenizer.h"

#include "core/report.h"
#include "launch/commands.h"
#include "launch/session.h"

namespace dsi::cli {

namespace {
void write_json(const std::string& path, const nlohmann::json& j) {
  std::ofstream out(path);
  if (!out) throw UsageError(fmt::format("cannot write '{}'", path));
  out << j.dump(1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
}
}  // namespace

std::vector<std::vector<int>> tree_rows(const RunConfig& cfg, const std::string& trees, int tokens,
                                        const std::vector<double>& temperatures) {
  const auto shapes = parse_tree_shapes(trees, "--trees");
  for (const auto& shape : shapes) {
    RunConfig tc = cfg;
    tc.mode = Mode::kDsi;
    tc.tree = shape;
    tc.adapt = false;  // tree rows run without it
    tc.max_new_tokens = tokens;
    for (double t : temperatures) {
      tc.temperature = t;
      check_tree_config(tc);
    }
  }
  return shapes;
}

void check_model_paths(const RunConfig& cfg) {
  if (cfg.engine != "llama") return;
  for (const auto& [key, path] : {std::pair{"model.path", cfg.model_path},
                                  std::pair{"model.drafter_path", cfg.drafter_model_path}}) {
    if (!path.empty() && !std::filesystem::exists(path)) {
      throw ConfigError(fmt::format("{} '{}' does not exist (for the default model run "
                                    "launch/fetch_model.sh)",
                                    key, path));
    }
  }
}

int cmd_run(const CommonOptions& common, const RunOptions& opts) {
  int n_targets = 0;
  return with_session(
      common,
      [&](Session& s) {
        n_targets = s.cfg.n_targets(s.world);
        check_model_paths(s.cfg);
      },
      [&](Session& s, Coordinator& coord) {
        if (!opts.json) {
          fmt::print("dsi: {} ranks: 1 coordinator, {} drafter, {} targets; mode {}, k {}\n",
                     s.world, s.cfg.n_drafters(), n_targets, mode_name(s.cfg.mode),
                     s.cfg.lookahead);
        }
        // Real models stream their text as tokens commit.
        std::unique_ptr<StreamDecoder> stream;
        if (s.cfg.engine != "synthetic" && !opts.json) {
          stream = std::make_unique<StreamDecoder>(coord.text_model(s.cfg.model_path)->tokenizer());
          fmt::print("--- prompt: {}\n", s.cfg.prompt);
        }
        RunReport rep = coord.run(s.cfg, n_targets, [&](std::span<const Token> toks) {
          if (!stream) return;
          for (Token t : toks) fmt::print("{}", stream->push(t));
          std::fflush(stdout);
        });
        const auto summary = summary_json(rep);
        if (opts.json) {
          fmt::print("{}\n",
                     summary.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
        } else {
          if (stream) {
            fmt::print("{}\n---\n", stream->flush());
          } else {
            fmt::print("generated ids: {}\n", fmt::join(rep.tokens, " "));
          }
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
