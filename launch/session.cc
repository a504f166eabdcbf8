#include "launch/session.h"

#include <fmt/format.h>
#include <mpi.h>

#include <cstdlib>
#include <fstream>
#include <sstream>

#include "common/error.h"
#include "common/gpu_binding.h"
#include "launch/faults.h"
#include "transport/data_plane.h"
#include "transport/mpi_check.h"

namespace dsi {
namespace {

// Rank 0 reads the file; every rank gets its text (or the reason it could not be read).
bool read_config(const std::string& path, int rank, std::string& text) {
  int ok = 1;
  if (rank == 0 && !path.empty()) {
    std::ifstream in(path);
    if (!in) {
      ok = 0;
      text = fmt::format("cannot read config file '{}'", path);
    } else {
      std::stringstream ss;
      ss << in.rdbuf();
      text = ss.str();
    }
  }
  long n = static_cast<long>(text.size());
  mpi_check(MPI_Bcast(&ok, 1, MPI_INT, 0, MPI_COMM_WORLD), "MPI_Bcast");
  mpi_check(MPI_Bcast(&n, 1, MPI_LONG, 0, MPI_COMM_WORLD), "MPI_Bcast");
  text.resize(n);
  mpi_check(MPI_Bcast(text.data(), static_cast<int>(n), MPI_CHAR, 0, MPI_COMM_WORLD), "MPI_Bcast");
  return ok == 1;
}

// The node-local rank, for GPU binding: the launcher's variable, else the rank among the
// processes that share this node's memory (a collective: every rank calls it).
int find_local_rank() {
  int from_mpi = 0;
  MPI_Comm node;
  mpi_check(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node),
            "MPI_Comm_split_type");
  mpi_check(MPI_Comm_rank(node, &from_mpi), "MPI_Comm_rank");
  mpi_check(MPI_Comm_free(&node), "MPI_Comm_free");
  const LocalRank env = local_rank_from_env([](const char* v) { return std::getenv(v); });
  return env.rank >= 0 ? env.rank : from_mpi;
}

// Everything after MPI_Init_thread; with_session turns an MPI failure thrown from here into
// a report and an abort.
int session_body(const SessionOptions& common, const std::function<void(Session&)>& validate,
                 const std::function<int(Session&, Coordinator&)>& coordinate, int provided) {
  Session s;
  mpi_check(MPI_Comm_rank(MPI_COMM_WORLD, &s.rank), "MPI_Comm_rank");
  mpi_check(MPI_Comm_size(MPI_COMM_WORLD, &s.world), "MPI_Comm_size");
  {
    char host[MPI_MAX_PROCESSOR_NAME] = {};
    int len = 0;
    mpi_check(MPI_Get_processor_name(host, &len), "MPI_Get_processor_name");
    // Before any thread starts: from here on every dsi::Error names this rank and host.
    set_process_identity(s.rank, std::string(host, len));
  }
  set_local_rank(find_local_rank());
  // Errors every rank raises alike (config, data plane): printed once, by rank 0, without
  // its identity (the text is nobody's in particular).
  auto fail = [&](const std::string& msg, int code) {
    if (s.rank == 0) fmt::print(stderr, "dsi: error: {}\n", msg);
    mpi_warn(MPI_Finalize(), "MPI_Finalize");
    return code;
  };
  if (provided < MPI_THREAD_MULTIPLE) {
    return fail("the MPI library does not provide MPI_THREAD_MULTIPLE", 2);
  }
  std::string text;
  if (!read_config(common.config_path, s.rank, text)) return fail(text, 2);
  try {
    s.cfg = parse_config(text, common.config_path.empty() ? "defaults" : common.config_path,
                         common.overrides);
    validate(s);
  } catch (const ConfigError& e) {
    return fail(std::string(e.message()), 2);
  }
  if (common.fault_rank >= 0) {
    try {
      check_fault(common.fault);
    } catch (const std::invalid_argument& e) {
      return fail(e.what(), 2);
    }
  }

  // The data plane first: when it cannot be had, every rank fails alike before any other
  // channel exists.
  DataPlaneOptions plane;
  plane.mode = s.cfg.data_plane;
  // NCCL needs every worker rank on a GPU of its own.
  plane.gpu_ranks = s.cfg.device == "cuda" && s.cfg.drafter_device == "cuda";
  plane.poll_us = s.cfg.poll_min_us;
  try {
    s.data = make_data_channel(MPI_COMM_WORLD, plane);
  } catch (const DataPlaneError& e) {
    return fail(std::string(e.message()), 2);
  }
  const MpiChannel::Polling polling{
      .wait = s.cfg.wait == "spin"    ? MpiChannel::Wait::kSpin
              : s.cfg.wait == "sleep" ? MpiChannel::Wait::kSleep
                                      : MpiChannel::Wait::kAdaptive,
      .spin_us = s.cfg.spin_us,
      // The coordinator's one thread; a worker's receiving thread and its engine's.
      .threads = s.rank == 0 ? 1 : 1 + s.cfg.threads,
      .min_us = s.cfg.poll_min_us,
      .max_us = s.cfg.poll_max_us,
      .hot_ms = s.cfg.poll_hot_ms};
  s.channel = std::make_unique<MpiChannel>(MPI_COMM_WORLD, polling);
  int rc = 0;
  if (s.rank == 0) {
    Coordinator coord(*s.channel, s.cfg.heartbeat_ms, s.cfg.peer_timeout_s);
    try {
      rc = coordinate(s, coord);
      coord.exit_all(rc);
    } catch (const PeerError& e) {
      fmt::print(stderr, "dsi: error: {}\n", e.what());
      if (e.dead) {
        // A dead or wedged rank cannot take part in a clean shutdown.
        fflush(stdout);
        MPI_Abort(MPI_COMM_WORLD, 1);
      }
      coord.exit_all(1);
      rc = 1;
    } catch (const TransportError&) {
      throw;  // no clean shutdown over a failed transport: with_session aborts
    } catch (const std::exception& e) {
      fmt::print(stderr, "dsi: error: {}\n", e.what());
      coord.exit_all(1);
      rc = 1;
    }
  } else {
    WorkerOptions wo{.heartbeat_ms = s.cfg.heartbeat_ms, .peer_timeout_s = s.cfg.peer_timeout_s};
    std::unique_ptr<ControlChannel> faulty;  // testing: the rank that fails
    if (s.rank == common.fault_rank) {
      faulty = apply_fault(common.fault, common.fault_after_ms, *s.channel, wo);
    }
    try {
      rc = run_worker(faulty ? *faulty : *s.channel, wo, s.data.get());
    } catch (const WorkerFatal& e) {
      fmt::print(stderr, "dsi: error: {}\n", e.what());
      MPI_Abort(MPI_COMM_WORLD, 1);
    }
  }
  s.channel->flush(Clock::now() + std::chrono::seconds(2));
  s.data.reset();
  s.channel.reset();
  mpi_warn(MPI_Finalize(), "MPI_Finalize");
  return rc;
}

}  // namespace

int with_session(const SessionOptions& common, const std::function<void(Session&)>& validate,
                 const std::function<int(Session&, Coordinator&)>& coordinate) {
  int provided = 0;
  if (MPI_Init_thread(nullptr, nullptr, MPI_THREAD_MULTIPLE, &provided) != MPI_SUCCESS) {
    fmt::print(stderr, "dsi: error: MPI_Init_thread failed\n");
    return 1;
  }
  try {
    // MPI failures on the world (and on every communicator dsi creates) come back as codes
    // that mpi_check turns into a TransportError naming the call, the rank and the host.
    mpi_errors_return(MPI_COMM_WORLD);
    return session_body(common, validate, coordinate, provided);
  } catch (const TransportError& e) {
    // A failed MPI call leaves no channel to end the job cleanly over: the rank that saw it
    // reports it and takes every rank down.
    fmt::print(stderr, "dsi: error: {}\n", e.what());
    fflush(stdout);
    MPI_Abort(MPI_COMM_WORLD, 1);
    return 1;
  }
}

}  // namespace dsi
