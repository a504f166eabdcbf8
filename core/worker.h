// The worker loop of a drafter or target rank. Two threads (the caller's and one more) take
// turns: while one runs the engine, the other receives control messages, raises the cancel
// flag of a preempted task at once and keeps the heartbeat. The receiving thread runs the work
// it receives itself when nobody is working, and wakes the other to receive: a task that finds
// the worker idle starts after one wake-up, not two. Neither spins: the idle thread sleeps on a
// condition variable, the receiving one on the channel's doorbell.
// The roles live in their own files: core/drafter_role.cc (draft chains), core/target_role.cc
// (verifications), core/handoff_role.cc (KV handoff); core/spans.h keeps the trace.
#pragma once

#include <functional>
#include <memory>
#include <stdexcept>

#include "common/error.h"
#include "core/protocol.h"
#include "engines/engine_factory.h"
#include "transport/data_channel.h"

namespace dsi {

struct WorkerOptions {
  int heartbeat_ms = 200;
  double peer_timeout_s = 5;
  // Builds the engine a Configure asks for; empty: make_engine.
  std::function<std::unique_ptr<Engine>(const EngineSpec&)> engine_factory;
};

// Serves runs until the coordinator sends Exit; returns the exit code it carries. Throws
// WorkerFatal when the coordinator falls silent for longer than peer_timeout_s.
// `data` carries the drafter's probability vectors in sampling mode and KV handoffs (may be
// null otherwise).
int run_worker(ControlChannel& ch, const WorkerOptions& opts, DataChannel* data = nullptr);

}  // namespace dsi
