// The `dsi` subcommands. run, bench and sweep run on every MPI rank: rank 0 coordinates, the
// others serve as workers. simulate and profile are plain processes (no MPI_Init). They
// return the process exit code.
#pragma once

#include <string>
#include <vector>

#include "common/error.h"
#include "launch/session.h"

namespace dsi::cli {

using CommonOptions = SessionOptions;

struct RunOptions {
  bool json = false;
  std::string trace_path;
  std::string json_path;
  double temperature = -1;  // < 0: as configured
};

struct BenchOptions {
  double t_ms = 20;
  std::string grid = "0.1:0.9:5,0.05:0.8:5,0.2:0.5:2,0.3:0.3:3";  // c:a:k,...
  std::vector<int> sp = {1, 2, 4, 8};
  int tokens = 200;
  std::vector<double> temperatures = {0};
  std::string json_path;
  bool adapt = false;         // also a runtime.adapt row per point
  std::string trees;          // token-tree shapes "3,2,1,1;2,1,1,1": SI and DSI rows with each
  std::vector<int> drafters;  // merged drafters: SI and DSI rows with each count (2-4)
};

struct SimulateOptions {
  std::string profile_path;  // dsi profile JSON: t, c, a, per-token cost
  double t_ms = 20;
  double c = 0.1;    // drafter latency as a fraction of t
  double c_ms = -1;  // or in ms (wins over c)
  double a = 0.9;
  double per_token_ms = 0;
  std::vector<int> k = {5};
  std::vector<int> sp = {1, 2, 4, 8};
  int tokens = 1000;
  int runs = 40;
  long long seed = 1;
  std::string queue = "newest";
  int max_k = 10;
  int max_sp = 16;
  double tolerance = 0.01;
  bool json = false;
  std::string json_path;
  // Token trees: shapes "3,2,1,1;2,1,1,1" simulated beside the chains, and the probability
  // that the target's token is the drafter's 2nd, 3rd, ... best (a profile measures them).
  std::string trees;
  std::vector<double> ranks;
  // Tensor-parallel targets: "N:T,..." = a target of N ranks forwards in T ms (t per group);
  // each is simulated at every k and SP, and the ranks it takes (1 + drafter_tp + SP x N) are
  // compared at equal budgets.
  std::string tp;
  int drafter_tp = 1;
  // Which of t/c/a/per-token/ranks were given on the command line (they win over a profile).
  bool t_set = false, c_set = false, a_set = false, pt_set = false, ranks_set = false;
};

struct ProfileOptions {
  std::string config_path;             // engine specs built from a run config
  std::vector<std::string> overrides;  // dotted.key=value
  std::string target_spec;             // or raw JSON engine specs (make_engine)
  std::string drafter_spec;
  std::string prompts_path;  // one prompt per line: token ids; default: synthetic prompts
  int prompts = 4;
  int tokens = 32;    // greedy target tokens per prompt (acceptance, decode latency)
  int max_draft = 8;  // verification forwards of 1 .. max_draft + 1 tokens
  int repeats = 3;    // each verification size measured this many times (median)
  std::string out_path;
  bool json = false;
};

struct SweepOptions {
  std::vector<std::string> ranks;  // rank counts: "2-10" or single numbers
  std::vector<int> sp;             // or SP degrees directly (ranks = SP + 2)
  std::vector<int> k;              // lookaheads (default: the config's)
  int tokens = -1;                 // default: the config's generation.max_new_tokens
  std::string out_prefix = "sweep";
  std::string plot_script;  // default: the installed/source launch/plot_sweep.py
  std::string python = "/usr/bin/python3";
  bool no_plot = false;
  int sim_runs = 20;
  bool adapt = false;  // also a runtime.adapt row per SP
  std::string trees;   // token-tree shapes "3,2,1,1;2,1,1,1": SI and DSI rows with each
};

struct MakeModelOptions {
  std::string shape;  // a named shape (random_model_shape); explicit sizes below override it
  int dim = -1, layers = -1, heads = -1, kv_heads = -1, ffn = -1, vocab = -1, context = -1;
  std::string type = "f16";  // f32 | f16 | bf16 | q8_0 | q4_0 | q4_1
  long long seed = 1;
  bool untied = false;
  std::string out_path;
};

struct ServeOptions {
  std::string host = "127.0.0.1";
  int port = 8000;
  std::string api_key;
  std::string model_name = "dsi";
  size_t max_body = 1 << 20;
  int queue = 16;
  double read_timeout_s = 10;
  double request_timeout_s = 600;
  int max_connections = 1024;
  int max_tokens = 256;   // when a request does not say
  std::string port_file;  // written once listening: the port, then rank 0's pid
};

int cmd_simulate(const SimulateOptions& opts);
// `dsi serve`: an OpenAI-compatible HTTP server on rank 0 (launch/serve.cc).
int cmd_serve(const CommonOptions& common, const ServeOptions& opts);
// Writes a random-weight llama GGUF (model/random_model.h); no MPI.
int cmd_make_model(const MakeModelOptions& opts);
int cmd_profile(const ProfileOptions& opts);
int cmd_sweep(const CommonOptions& common, const SweepOptions& opts);
int cmd_run(const CommonOptions& common, const RunOptions& opts);
// ConfigError when a model file the config names is missing (checked on every rank).
void check_model_paths(const RunConfig& cfg);
// The shapes of a --trees option, each checked as its SI and DSI rows run it (without
// runtime.adapt, `tokens` new tokens, at each of the temperatures); ConfigError naming --trees
// or dsi.tree otherwise.
std::vector<std::vector<int>> tree_rows(const RunConfig& cfg, const std::string& trees, int tokens,
                                        const std::vector<double>& temperatures);
int cmd_bench(const CommonOptions& common, const BenchOptions& opts);

}  // namespace dsi::cli
