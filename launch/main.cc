// The `dsi` command line: parses arguments (before MPI starts, so --help needs no mpirun)
// and hands over to a subcommand.
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>

#include "launch/commands.h"
#include "runtime/config.h"
#include "runtime/version.h"

namespace {

const char* kRoles = R"(Roles by rank (launch with mpirun -np N, or srun):
  rank 0                coordinator: schedules drafts and verifications, never computes
  rank 1                drafter (modes dsi and si; nonsi has none)
  ranks 2 .. N-1        targets; their count is the SP degree (roles.targets = auto)
  so dsi/si need N >= 3 and nonsi N >= 2. Idle ranks block without spinning a core.
Examples:
  mpirun -np 6 dsi run --config configs/synthetic.yaml          # DSI with SP = 4
  mpirun -np 6 dsi run --config configs/synthetic.yaml --mode si --json
  mpirun -np 10 --oversubscribe dsi bench --sp 1,2,4,8)";

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"dsi: Distributed Speculative Inference runtime (coordinator, drafter and target "
               "MPI ranks)"};
  app.footer(kRoles);
  app.set_version_flag("--version", dsi::version_string());
  app.require_subcommand(1);

  dsi::cli::CommonOptions common;
  auto add_common = [&](CLI::App* sub) {
    sub->add_option("--config", common.config_path, "YAML config file (see configs/)")
        ->check(CLI::ExistingFile);
    sub->add_option("--set", common.overrides, "override a config key: --set synthetic.a=0.5");
    sub->add_option("--fault-rank", common.fault_rank, "testing: rank that fails")->group("Testing");
    sub->add_option("--fault", common.fault, "testing: exit | hang")
        ->check(CLI::IsMember({"exit", "hang"}))->group("Testing");
    sub->add_option("--fault-after-ms", common.fault_after_ms, "testing: when it fails")->group("Testing");
  };

  dsi::cli::RunOptions run_opts;
  std::string mode;
  int max_new = -1, k = -1;
  long long seed = -1;
  std::string prompt, prompt_file;
  auto* run = app.add_subcommand("run", "generate once with the configured mode, print a summary");
  add_common(run);
  run->add_option("--mode", mode, "dsi | si | nonsi")->check(CLI::IsMember({"dsi", "si", "nonsi"}));
  run->add_option("--max-new-tokens", max_new, "tokens to generate");
  run->add_option("-k,--lookahead", k, "drafts per verification task");
  run->add_option("--seed", seed, "seed");
  run->add_option("--prompt", prompt, "prompt text (llama engine)");
  run->add_option("--prompt-file", prompt_file, "read the prompt from a file")->check(CLI::ExistingFile);
  run->add_option("--temperature", run_opts.temperature, "sampling temperature (0 = greedy)");
  run->add_flag("--json", run_opts.json, "print the summary as one JSON object");
  run->add_option("--json-file", run_opts.json_path, "also write the JSON summary to a file");
  run->add_option("--trace", run_opts.trace_path,
                  "write a Chrome/Perfetto trace of every rank's spans to FILE");
  run->footer(std::string("Config keys:\n") + dsi::config_reference());

  dsi::cli::BenchOptions bench_opts;
  auto* bench = app.add_subcommand(
      "bench", "non-SI, SI and DSI over a (c, a, k, SP) grid with the synthetic engine");
  add_common(bench);
  bench->add_option("--t-ms", bench_opts.t_ms, "target forward latency t (ms)")->capture_default_str();
  bench->add_option("--grid", bench_opts.grid, "c:a:k points, comma separated")->capture_default_str();
  bench->add_option("--sp", bench_opts.sp, "SP degrees for DSI (needs SP+2 ranks)")
      ->delimiter(',')->capture_default_str();
  bench->add_option("--tokens", bench_opts.tokens, "tokens per run")->capture_default_str();
  bench->add_option("--json-file", bench_opts.json_path, "write the JSON results here");

  CLI11_PARSE(app, argc, argv);

  if (run->parsed()) {
    if (!mode.empty()) common.overrides.push_back("mode=" + mode);
    if (max_new >= 0) common.overrides.push_back(fmt::format("generation.max_new_tokens={}", max_new));
    if (k >= 0) common.overrides.push_back(fmt::format("dsi.lookahead={}", k));
    if (seed >= 0) common.overrides.push_back(fmt::format("generation.seed={}", seed));
    if (run_opts.temperature >= 0) {
      common.overrides.push_back(fmt::format("sampling.temperature={}", run_opts.temperature));
    }
    if (!prompt_file.empty()) {
      std::ifstream in(prompt_file);
      prompt.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    }
    if (!prompt.empty()) {
      // A YAML double-quoted scalar carries any text.
      nlohmann::json quoted = prompt;
      common.overrides.push_back("generation.prompt=" + quoted.dump(-1, ' ', false));
    }
    return dsi::cli::cmd_run(common, run_opts);
  }
  return dsi::cli::cmd_bench(common, bench_opts);
}
