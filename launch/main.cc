// The `dsi` command line: parses arguments (before MPI starts, so --help needs no mpirun)
// and hands over to a subcommand. simulate, profile and make-model never start MPI: they run as
// plain processes.
#include <fmt/format.h>
#include <CLI/CLI.hpp>

#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>

#include "common/version.h"
#include "core/config.h"
#include "launch/commands.h"

namespace {

const char* kRoles = R"(Roles by rank (launch with mpirun -np N, or srun):
  rank 0                coordinator: schedules drafts and verifications, never computes
  rank 1                drafter (modes dsi and si; nonsi has none)
  ranks 2 .. N-1        targets; their count is the SP degree (roles.targets = auto)
  so dsi/si need N >= 3 and nonsi N >= 2. Idle ranks block without spinning a core.
Examples:
  mpirun -np 6 dsi run --config configs/synthetic.yaml          # DSI with SP = 4
  mpirun -np 6 dsi run --config configs/synthetic.yaml --mode si --json
  mpirun -np 10 --oversubscribe dsi bench --sp 1,2,4,8
  mpirun -np 10 --oversubscribe dsi sweep --config configs/synthetic.yaml --ranks 2-10
  dsi profile --config configs/synthetic.yaml --out profile.json    # no mpirun
  dsi simulate --profile profile.json -k 3,5 --sp 1,2,4,8             # no mpirun)";

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
    sub->add_option("--fault-rank", common.fault_rank, "testing: rank that fails")
        ->group("Testing");
    sub->add_option("--fault", common.fault, "testing: exit | hang | kv_corrupt")
        ->check(CLI::IsMember({"exit", "hang", "kv_corrupt"}))
        ->group("Testing");
    sub->add_option("--fault-after-ms", common.fault_after_ms, "testing: when it fails")
        ->group("Testing");
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
  run->add_option("--prompt-file", prompt_file, "read the prompt from a file")
      ->check(CLI::ExistingFile);
  run->add_option("--temperature", run_opts.temperature, "sampling temperature (0 = greedy)");
  run->add_flag("--json", run_opts.json, "print the summary as one JSON object");
  run->add_option("--json-file", run_opts.json_path, "also write the JSON summary to a file");
  run->add_option("--trace", run_opts.trace_path,
                  "write a Chrome/Perfetto trace of every rank's spans to FILE");
  run->footer(std::string("Config keys:\n") + dsi::config_reference());

  dsi::cli::BenchOptions bench_opts;
  auto* bench = app.add_subcommand(
      "bench", "non-SI, SI and DSI over a (c, a, k, SP) grid with the synthetic engine, or over "
               "SP and temperatures for the model of --config");
  add_common(bench);
  bench->add_option("--t-ms", bench_opts.t_ms, "target forward latency t (ms)")
      ->capture_default_str();
  bench->add_option("--grid", bench_opts.grid, "c:a:k points, comma separated")
      ->capture_default_str();
  bench->add_option("--sp", bench_opts.sp, "SP degrees for DSI (needs SP+2 ranks)")
      ->delimiter(',')
      ->capture_default_str();
  bench->add_option("--tokens", bench_opts.tokens, "tokens per run")->capture_default_str();
  bench
      ->add_option("--temperatures", bench_opts.temperatures,
                   "sampling temperatures to run every point at (0 = greedy)")
      ->delimiter(',')
      ->capture_default_str();
  bench->add_option("--json-file", bench_opts.json_path, "write the JSON results here");
  bench->add_flag("--adapt", bench_opts.adapt,
                  "also run each point with runtime.adapt: on at the largest SP (mode 'adapt')");
  bench->add_option("--trees", bench_opts.trees,
                    "token-tree shapes, e.g. \"3,2,1,1;2,1,1,1\": also SI and DSI with each "
                    "(dsi.tree; k is the depth)");
  bench
      ->add_option("--drafters", bench_opts.drafters,
                   "merged drafters, e.g. 2,3: also SI and DSI with each count of drafter ranks "
                   "(roles.drafters; real models need model.extra_drafters)")
      ->delimiter(',');

  dsi::cli::SimulateOptions sim;
  auto* simulate = app.add_subcommand(
      "simulate", "predict non-SI/SI/DSI latency (closed forms + simulated scheduler), "
                  "recommend k and SP; no MPI");
  simulate->add_option("--profile", sim.profile_path, "dsi profile JSON giving t, c, a")
      ->check(CLI::ExistingFile);
  auto* o_t = simulate->add_option("--t-ms,-t", sim.t_ms, "target forward latency t (ms)")
                  ->capture_default_str();
  auto* o_c = simulate->add_option("--c", sim.c, "drafter latency per token, fraction of t")
                  ->capture_default_str();
  auto* o_cms = simulate->add_option("--c-ms", sim.c_ms, "drafter latency per token (ms)");
  auto* o_a = simulate->add_option("--a,-a", sim.a, "acceptance rate")->capture_default_str();
  auto* o_pt = simulate
                   ->add_option("--per-token-ms", sim.per_token_ms,
                                "target cost per token in a forward (ms)")
                   ->capture_default_str();
  simulate->add_option("-k,--lookahead", sim.k, "lookaheads for the table")
      ->delimiter(',')
      ->capture_default_str();
  simulate->add_option("--sp", sim.sp, "SP degrees for the table")
      ->delimiter(',')
      ->capture_default_str();
  simulate->add_option("--tokens", sim.tokens, "tokens per simulated run")->capture_default_str();
  simulate->add_option("--runs", sim.runs, "simulated runs (seeds) averaged")
      ->capture_default_str();
  simulate->add_option("--seed", sim.seed, "seed of the acceptance draws")->capture_default_str();
  simulate->add_option("--queue", sim.queue, "newest | fifo")->capture_default_str();
  simulate->add_option("--max-k", sim.max_k, "recommendation: scan k = 1..max")
      ->capture_default_str();
  simulate->add_option("--max-sp", sim.max_sp, "recommendation: scan SP = 1..max")
      ->capture_default_str();
  simulate
      ->add_option("--tolerance", sim.tolerance,
                   "recommend the smallest SP within this fraction of the best")
      ->capture_default_str();
  simulate->add_option("--trees", sim.trees,
                       "token-tree shapes, e.g. \"3,2,1,1;2,1,1,1\": SI and DSI with each, and "
                       "the best SP per shape beside the chains' recommendation");
  auto* o_ranks = simulate
                      ->add_option("--ranks", sim.ranks,
                                   "trees: probability that the target's token is the drafter's "
                                   "2nd, 3rd, ... best (default: a profile's, else none)")
                      ->delimiter(',');
  simulate->add_option("--tp", sim.tp,
                       "tensor-parallel targets, \"N:T,...\": a target group of N ranks forwards "
                       "in T ms; each simulated at every k and SP, compared by ranks used");
  simulate->add_option("--drafter-tp", sim.drafter_tp, "ranks of the drafter's group (with --tp)")
      ->capture_default_str();
  simulate->add_flag("--json", sim.json, "print one JSON object instead of the table");
  simulate->add_option("--json-file", sim.json_path, "also write the JSON here");

  dsi::cli::MakeModelOptions mk;
  auto* make_model = app.add_subcommand(
      "make-model", "write a random-weight llama GGUF of any shape, with a byte-fallback SPM "
                    "tokenizer, for benchmarks and tests; no MPI");
  make_model->add_option("--shape", mk.shape, "tiny | llama-1b | llama-3b | llama-7b");
  make_model->add_option("--dim", mk.dim, "model width");
  make_model->add_option("--layers", mk.layers, "decoder blocks");
  make_model->add_option("--heads", mk.heads, "attention heads");
  make_model->add_option("--kv-heads", mk.kv_heads, "KV heads (GQA)");
  make_model->add_option("--ffn", mk.ffn, "feed-forward width");
  make_model->add_option("--vocab", mk.vocab, "vocabulary size (>= 259)");
  make_model->add_option("--context", mk.context, "context length");
  make_model->add_option("--type", mk.type, "2-D weight type")
      ->check(CLI::IsMember({"f32", "f16", "bf16", "q8_0", "q4_0", "q4_1"}))
      ->capture_default_str();
  make_model->add_option("--seed", mk.seed, "weights seed")->capture_default_str();
  make_model->add_flag("--untied", mk.untied, "separate output.weight instead of a tied head");
  make_model->add_option("--out,-o", mk.out_path, "output .gguf file")->required();

  dsi::cli::ProfileOptions prof;
  auto* profile = app.add_subcommand(
      "profile", "measure a model pair on this machine (target TTFT and forward latency vs "
                 "draft length, drafter latency, acceptance rate) and write JSON for simulate; "
                 "no MPI");
  profile->add_option("--config", prof.config_path, "run config whose engines to profile")
      ->check(CLI::ExistingFile);
  profile->add_option("--set", prof.overrides, "override a config key: --set synthetic.a=0.5");
  profile->add_option("--target-spec", prof.target_spec,
                      "target engine spec (JSON), instead of a config");
  profile->add_option("--drafter-spec", prof.drafter_spec, "drafter engine spec (JSON)");
  profile
      ->add_option("--prompts-file", prof.prompts_path,
                   "prompts, one a line as token ids (default: synthetic prompts)")
      ->check(CLI::ExistingFile);
  profile->add_option("--prompts", prof.prompts, "number of synthetic prompts")
      ->capture_default_str();
  profile->add_option("--tokens", prof.tokens, "greedy tokens per prompt")->capture_default_str();
  profile->add_option("--max-draft", prof.max_draft, "verify forwards of 1..max+1 tokens")
      ->capture_default_str();
  profile->add_option("--repeats", prof.repeats, "timings per verify size (median)")
      ->capture_default_str();
  profile->add_option("--out,-o", prof.out_path, "write the profile JSON here");
  profile->add_flag("--json", prof.json, "print the profile JSON instead of the summary");

  dsi::cli::SweepOptions sw;
  auto* sweep = app.add_subcommand(
      "sweep", "non-SI, SI and DSI over rank counts (SP) and lookaheads in one launch: CSV, "
               "JSON and a PNG plot against the closed forms and the simulator");
  add_common(sweep);
  sweep->add_option("--ranks", sw.ranks, "rank counts, e.g. 2-10 or 3,4,6 (SP = ranks - 2)")
      ->delimiter(',');
  sweep->add_option("--sp", sw.sp, "SP degrees instead of rank counts")->delimiter(',');
  sweep->add_option("-k,--lookahead", sw.k, "lookaheads (default: the config's)")->delimiter(',');
  sweep->add_option("--tokens", sw.tokens, "tokens per run (default: the config's)");
  sweep->add_option("--out", sw.out_prefix, "output prefix: PREFIX.csv, .json, .png")
      ->capture_default_str();
  sweep->add_option("--sim-runs", sw.sim_runs, "i.i.d. simulations averaged per point")
      ->capture_default_str();
  sweep->add_option("--plot-script", sw.plot_script,
                    "plotting script (default: launch/plot_sweep.py)");
  sweep->add_option("--python", sw.python, "Python with matplotlib")->capture_default_str();
  sweep->add_flag("--no-plot", sw.no_plot, "write CSV and JSON only");
  sweep->add_option("--trees", sw.trees,
                    "token-tree shapes, e.g. \"3,2,1,1;2,1,1,1\": also SI and DSI at each SP "
                    "with each (dsi.tree; k is the depth)");
  sweep->add_flag("--adapt", sw.adapt,
                  "also run runtime.adapt: on at each SP (mode 'adapt', starting from DSI at the "
                  "first k)");

  dsi::cli::ServeOptions srv;
  auto* serve = app.add_subcommand(
      "serve", "an OpenAI-compatible HTTP server on rank 0 (/v1/completions, "
               "/v1/chat/completions, /v1/models, /health, /metrics); the other ranks stay "
               "loaded between requests; SIGTERM drains");
  add_common(serve);
  serve->add_option("--host", srv.host, "address to listen on")->capture_default_str();
  serve->add_option("--port", srv.port, "port (0: any free one)")->capture_default_str();
  serve
      ->add_option("--api-key", srv.api_key,
                   "require 'Authorization: Bearer KEY' (default: none; also $DSI_API_KEY)")
      ->envname("DSI_API_KEY");
  serve->add_option("--model-name", srv.model_name, "the model's name in the API")
      ->capture_default_str();
  serve->add_option("--max-tokens", srv.max_tokens, "tokens per request when it does not say")
      ->capture_default_str();
  serve->add_option("--queue", srv.queue, "requests that may wait; more get 429")
      ->capture_default_str();
  serve->add_option("--max-body", srv.max_body, "request body limit in bytes (413 beyond)")
      ->capture_default_str();
  serve
      ->add_option("--read-timeout", srv.read_timeout_s,
                   "seconds a client has to send a request (and keep-alive idleness)")
      ->capture_default_str();
  serve
      ->add_option("--request-timeout", srv.request_timeout_s,
                   "seconds from a request's arrival to the end of its answer (504 beyond)")
      ->capture_default_str();
  serve->add_option("--max-connections", srv.max_connections, "open connections at most")
      ->capture_default_str();
  serve->add_option("--port-file", srv.port_file,
                    "once listening, write the port (and rank 0's pid) here");
  serve->footer(std::string("Config keys:\n") + dsi::config_reference());

  CLI11_PARSE(app, argc, argv);
  if (serve->parsed()) return dsi::cli::cmd_serve(common, srv);

  if (simulate->parsed()) {
    sim.t_set = o_t->count() > 0;
    sim.c_set = o_c->count() > 0 || o_cms->count() > 0;
    sim.a_set = o_a->count() > 0;
    sim.pt_set = o_pt->count() > 0;
    sim.ranks_set = o_ranks->count() > 0;
    return dsi::cli::cmd_simulate(sim);
  }
  if (make_model->parsed()) return dsi::cli::cmd_make_model(mk);
  if (profile->parsed()) return dsi::cli::cmd_profile(prof);
  if (sweep->parsed()) return dsi::cli::cmd_sweep(common, sw);

  if (run->parsed()) {
    if (!mode.empty()) common.overrides.push_back("mode=" + mode);
    if (max_new >= 0)
      common.overrides.push_back(fmt::format("generation.max_new_tokens={}", max_new));
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
