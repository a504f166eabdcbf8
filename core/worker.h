// The worker loop of a drafter or target rank. Two threads: the communication thread (the
// caller's) receives control messages, raises the cancel flag of a preempted task at once,
// and keeps the heartbeat; the compute thread runs the engine. Neither spins: the compute
// thread sleeps on a condition variable, the communication thread in the channel's back-off.
#pragma once

#include <functional>

#include "common/error.h"
#include "core/protocol.h"
#include "transport/data_channel.h"

namespace dsi {

struct WorkerOptions {
  int heartbeat_ms = 200;
  double peer_timeout_s = 5;
  // Fault injection for tests: after fault_after_ms, "exit" ends the process abruptly and
  // "hang" stops it (SIGSTOP) as a wedged node would; "kv_corrupt" corrupts the KV this rank
  // imports in handoffs (host engines).
  std::string fault;
  double fault_after_ms = 0;
};

// Serves runs until the coordinator sends Exit; returns the exit code it carries. Throws
// WorkerFatal when the coordinator falls silent for longer than peer_timeout_s.
// `data` carries the drafter's probability vectors in sampling mode (may be null otherwise).
int run_worker(ControlChannel& ch, const WorkerOptions& opts, DataChannel* data = nullptr);

}  // namespace dsi
