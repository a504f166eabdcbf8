// The `dsi` subcommands. Each runs on every MPI rank: rank 0 coordinates, the others serve
// as workers. They return the process exit code.
#pragma once

#include <string>
#include <vector>

#include "runtime/mpi_session.h"

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
  std::string json_path;
};

int cmd_run(const CommonOptions& common, const RunOptions& opts);
// ConfigError when a model file the config names is missing (checked on every rank).
void check_model_paths(const RunConfig& cfg);
int cmd_bench(const CommonOptions& common, const BenchOptions& opts);

}  // namespace dsi::cli
