#include "launch/session.h"

#include <fmt/format.h>
#include <mpi.h>
#include <sched.h>

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <fstream>
#include <optional>
#include <sstream>

#include "common/error.h"
#include "common/gpu_binding.h"
#include "core/tp_group.h"
#include "engines/llama/llama_engine.h"
#include "launch/faults.h"
#include "transport/data_plane.h"
#include "transport/mpi_check.h"
#include "transport/mpi_collective.h"
#include "transport/mpi_data_channel.h"

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

// A tensor-parallel group that cannot go on in step: no clean shutdown can reach a rank that
// waits in a collective, so the rank that saw it reports and takes the job down.
[[noreturn]] void group_fatal(const std::string& why) {
  fmt::print(stderr, "dsi: error: {}\n", Error(why).what());
  std::fflush(stderr);
  std::fflush(stdout);
  MPI_Abort(MPI_COMM_WORLD, 1);
  std::_Exit(1);
}

// A worker whose engine threads would share fewer CPUs than there are threads (Open MPI binds
// each rank to one core when np <= 2) says so: model.threads would buy nothing.
void warn_narrow_affinity(int rank, const RunConfig& cfg) {
  if (rank == 0 || cfg.engine != "llama" || cfg.threads <= 1) return;
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) != 0) return;
  const int cpus = CPU_COUNT(&set);
  if (cpus >= cfg.threads) return;
  fmt::print(stderr,
             "dsi: warning: {}: model.threads = {}, but this rank may run on {} CPU{} (its "
             "affinity, set by the launcher: Open MPI binds each rank to a core when np <= 2; "
             "launch with --bind-to none)\n",
             process_identity(), cfg.threads, cpus, cpus == 1 ? "" : "s");
}

// Tensor-parallel groups are refused before any model loads when the model's heads do not
// split (GGUF files: read from the header).
void check_tp_models(const RunConfig& cfg) {
  if (!cfg.tensor_parallel()) return;
  auto check = [](const std::string& path, const std::vector<int>& layers, int n, const char* key) {
    if (n <= 1 || path.empty()) return;
    const std::string file = expand_path(path);
    std::string why;
    try {
      // Heads from the header; blocks from the mapped file's tensor types (GGUF: no weight is
      // read; a Hugging Face folder is checked when it loads).
      const std::optional<LlamaConfig> c = read_llama_config(file);
      if (!c) return;
      why = tensor_parallel_refusal(*c, n);
      if (why.empty()) {
        const auto m = load_llama_model(file, layers);
        why = tensor_parallel_refusal(*m, llama_kept_layers(*m, layers), n);
      }
    } catch (const std::exception& e) {
      throw ConfigError(fmt::format("{}: cannot read the model '{}': {}", key, path, e.what()));
    }
    if (!why.empty()) throw ConfigError(fmt::format("{} = {}: {} (model '{}')", key, n, why, path));
  };
  check(cfg.model_path, {}, cfg.target_tp, "roles.target_tp");
  if (cfg.n_drafters() > 0) {
    const bool own = !cfg.drafter_model_path.empty();
    check(own ? cfg.drafter_model_path : cfg.model_path, cfg.drafter_layers, cfg.drafter_tp,
          "roles.drafter_tp");
  }
}

// The communicators of a run with tensor-parallel groups: the control plane (the coordinator
// and every group's leader, in layout order) and this rank's group (null when it has none).
struct Comms {
  MPI_Comm control = MPI_COMM_WORLD;
  MPI_Comm group = MPI_COMM_NULL;
  MPI_Comm collective = MPI_COMM_NULL;
  MPI_Comm shard = MPI_COMM_NULL;  // members of target groups: shard i of every target group
};

Comms split_world(const RankPlace& me, bool tp) {
  Comms c;
  if (!tp) return c;
  mpi_check(MPI_Comm_split(MPI_COMM_WORLD, me.control >= 0 ? 0 : MPI_UNDEFINED,
                           std::max(me.control, 0), &c.control),
            "MPI_Comm_split");
  const bool grouped = me.kind != RankPlace::Kind::kCoordinator && me.group_size > 1;
  mpi_check(MPI_Comm_split(MPI_COMM_WORLD, grouped ? me.first : MPI_UNDEFINED, me.shard, &c.group),
            "MPI_Comm_split");
  const bool target_member = me.kind == RankPlace::Kind::kTarget && me.shard > 0;
  mpi_check(
      MPI_Comm_split(MPI_COMM_WORLD, target_member ? me.shard : MPI_UNDEFINED, me.index, &c.shard),
      "MPI_Comm_split");
  if (c.control != MPI_COMM_NULL) mpi_errors_return(c.control);
  if (c.shard != MPI_COMM_NULL) mpi_errors_return(c.shard);
  if (c.group != MPI_COMM_NULL) {
    mpi_errors_return(c.group);
    mpi_check(MPI_Comm_dup(c.group, &c.collective), "MPI_Comm_dup");
  }
  return c;
}

// The leader's world rank of the lowest group that spans nodes, or -1 (a collective over the
// world).
int group_spanning_nodes(const Comms& c) {
  int spans = INT_MAX;
  if (c.group != MPI_COMM_NULL) {
    MPI_Comm node;
    mpi_check(MPI_Comm_split_type(c.group, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node),
              "MPI_Comm_split_type");
    int on_node = 0, size = 0, rank = 0;
    mpi_check(MPI_Comm_size(node, &on_node), "MPI_Comm_size");
    mpi_check(MPI_Comm_size(c.group, &size), "MPI_Comm_size");
    mpi_check(MPI_Comm_free(&node), "MPI_Comm_free");
    mpi_check(MPI_Comm_rank(MPI_COMM_WORLD, &rank), "MPI_Comm_rank");
    if (on_node != size) spans = rank;
  }
  int lowest = INT_MAX;
  mpi_check(MPI_Allreduce(&spans, &lowest, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD), "MPI_Allreduce");
  return lowest == INT_MAX ? -1 : lowest;
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

  // Tensor-parallel groups: the layout, refused before any model loads when it cannot run.
  const bool tp = s.cfg.tensor_parallel();
  std::vector<RankPlace> layout;
  try {
    if (tp) layout = rank_layout(s.cfg, s.world);  // the same verdict on every rank
  } catch (const ConfigError& e) {
    return fail(std::string(e.message()), 2);
  }
  if (tp) {
    // Each rank reads the model's header itself: agree, so that a file one node cannot read
    // fails every rank alike (the ranks that could not say why).
    std::string why;
    try {
      check_tp_models(s.cfg);
      if (common.fault_rank >= 0 && common.fault == "kv_corrupt") {
        throw ConfigError("--fault kv_corrupt is for single-rank targets (roles.target_tp = 1)");
      }
    } catch (const ConfigError& e) {
      why = e.message();
    }
    int ok = why.empty() ? 1 : 0, all = 0;
    mpi_check(MPI_Allreduce(&ok, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD), "MPI_Allreduce");
    int root_ok = ok;  // rank 0 prints its own reason; the others only when it has none
    mpi_check(MPI_Bcast(&root_ok, 1, MPI_INT, 0, MPI_COMM_WORLD), "MPI_Bcast");
    if (!all) {
      if (!why.empty() && s.rank != 0 && root_ok) {
        fmt::print(stderr, "dsi: error: {}: {}\n", process_identity(), why);
      }
      return fail(why.empty() ? "another rank could not check the model (its error is above)" : why,
                  2);
    }
  }
  const RankPlace me = tp ? layout[static_cast<size_t>(s.rank)] : RankPlace{};
  const Comms comms = split_world(me, tp);
  if (tp && !s.cfg.allow_cross_node_tp) {
    if (const int spans = group_spanning_nodes(comms); spans >= 0) {
      return fail(fmt::format("{} spans nodes; place each tensor-parallel group on one node "
                              "(consecutive ranks) or set roles.allow_cross_node_tp: true",
                              layout[static_cast<size_t>(spans)].group_name()),
                  2);
    }
  }
  const bool member = tp && me.control < 0;
  warn_narrow_affinity(s.rank, s.cfg);

  // The data plane first: when it cannot be had, every rank fails alike before any other
  // channel exists.
  DataPlaneOptions plane;
  plane.mode = s.cfg.data_plane;
  // NCCL needs every worker rank on a GPU of its own.
  plane.gpu_ranks = s.cfg.device == "cuda" && s.cfg.drafter_device == "cuda";
  plane.poll_us = s.cfg.poll_min_us;
  std::string plane_error;
  if (!member) {
    try {
      s.data = make_data_channel(comms.control, plane);
    } catch (const DataPlaneError& e) {
      plane_error = e.message();
    }
  }
  if (tp) {  // the members learn whether the control plane could start
    int ok = plane_error.empty() ? 1 : 0, all = 0;
    mpi_check(MPI_Allreduce(&ok, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD), "MPI_Allreduce");
    if (!all && plane_error.empty()) plane_error = "the data plane could not start";
  }
  if (!plane_error.empty()) return fail(plane_error, 2);
  const MpiChannel::Polling polling{
      .wait = s.cfg.wait == "spin"    ? MpiChannel::Wait::kSpin
              : s.cfg.wait == "sleep" ? MpiChannel::Wait::kSleep
                                      : MpiChannel::Wait::kAdaptive,
      .spin_us = s.cfg.spin_us,
      // The coordinator's one thread; a worker's receiving thread and its engine's (a leader's
      // also count its members', which share its node).
      .threads = s.rank == 0 ? 1 : (1 + s.cfg.threads) * me.group_size,
      .min_us = s.cfg.poll_min_us,
      .max_us = s.cfg.poll_max_us,
      .hot_ms = s.cfg.poll_hot_ms};
  // A group's calls from its leader to its members: members wait on their doorbell (the
  // control plane's policy decides whether the node is oversubscribed; spin only when asked).
  std::unique_ptr<MpiChannel> group_ch;
  std::unique_ptr<Collective> coll;
  std::unique_ptr<DataChannel> shard_data;
  GroupContext group;
  if (comms.group != MPI_COMM_NULL) {
    MpiChannel::Polling gp = polling;
    gp.wait = s.cfg.wait == "spin" ? MpiChannel::Wait::kSpin : MpiChannel::Wait::kSleep;
    group_ch = std::make_unique<MpiChannel>(comms.group, gp);
    coll = make_mpi_collective(comms.collective, s.cfg.peer_timeout_s);
    if (comms.shard != MPI_COMM_NULL) {
      shard_data = make_mpi_data_channel(comms.shard, s.cfg.poll_min_us);
    }
    group = GroupContext{.ch = group_ch.get(),
                         .coll = coll.get(),
                         .name = me.group_name(),
                         .fatal = group_fatal,
                         .shard_data = shard_data.get(),
                         .kv_handoff = me.kind == RankPlace::Kind::kTarget,
                         .first_target = 1 + s.cfg.n_drafters()};
  }
  if (member) {
    std::unique_ptr<ControlChannel> faulty;  // testing: the rank that fails
    WorkerOptions unused;
    if (s.rank == common.fault_rank) {
      faulty = apply_fault(common.fault, common.fault_after_ms, *group_ch, unused);
      if (faulty) group.ch = faulty.get();
    }
    run_group_member(group);
    shard_data.reset();
    group_ch.reset();
    coll.reset();
    mpi_warn(MPI_Finalize(), "MPI_Finalize");
    return 0;
  }
  s.channel = std::make_unique<MpiChannel>(comms.control, polling);
  int rc = 0;
  if (s.rank == 0) {
    Coordinator coord(*s.channel, s.cfg.heartbeat_ms, s.cfg.peer_timeout_s);
    if (tp) {
      coord.reserve_drafter_ranks(s.cfg.n_drafters());
      std::vector<int> world, size;
      for (const RankPlace& p : layout) {
        if (p.control < 0) continue;
        world.push_back(p.first);
        size.push_back(p.group_size);
      }
      coord.set_world_ranks(std::move(world), std::move(size));
    }
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
    if (group_ch) {
      wo.engine_factory = [&](const EngineSpec& spec) {
        return make_group_leader_engine(spec, group);
      };
    }
    try {
      rc = run_worker(faulty ? *faulty : *s.channel, wo, s.data.get());
    } catch (const WorkerFatal& e) {
      fmt::print(stderr, "dsi: error: {}\n", e.what());
      MPI_Abort(MPI_COMM_WORLD, 1);
    }
    if (group_ch) {
      end_group(*group_ch);
      group_ch->flush(Clock::now() + std::chrono::seconds(2));
    }
  }
  s.channel->flush(Clock::now() + std::chrono::seconds(2));
  s.data.reset();
  s.channel.reset();
  group_ch.reset();
  coll.reset();
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
