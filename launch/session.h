// What every subcommand does around its work under MPI: start MPI with thread support, read
// and validate the config identically on every rank (rank 0 reads the file and broadcasts
// it), report errors once, and end every rank with the same verdict and no hang.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/config.h"
#include "core/coordinator.h"
#include "core/worker.h"
#include "transport/data_channel.h"
#include "transport/mpi_channel.h"

namespace dsi {

struct SessionOptions {
  std::string config_path;             // empty: built-in defaults
  std::vector<std::string> overrides;  // dotted.key=value
  // Fault injection (tests, launch/faults.h): worker rank `fault_rank` exits or hangs after
  // fault_after_ms, or corrupts the KV it imports (kv_corrupt).
  int fault_rank = -1;
  std::string fault = "exit";
  double fault_after_ms = 0;
};

struct Session {
  int rank = 0;
  int world = 1;
  RunConfig cfg;
  std::unique_ptr<MpiChannel> channel;
  std::unique_ptr<DataChannel> data;
};

// Runs `coordinate` on rank 0 and the worker loop elsewhere. `validate` may throw
// ConfigError (it runs on every rank before any message is sent). Returns the exit code.
int with_session(const SessionOptions& common, const std::function<void(Session&)>& validate,
                 const std::function<int(Session&, Coordinator&)>& coordinate);

}  // namespace dsi
