// The coordinator (rank 0): configures the worker ranks for a run, drives the Scheduler with
// the prefills, drafts and verification results they report, executes its actions (the KV
// handoffs among them: it keeps no model of the targets' caches), keeps every peer's
// liveness, and collects the per-rank reports (busy time, trace spans) at the end of a run.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <stdexcept>

#include "common/error.h"
#include "core/config.h"
#include "core/protocol.h"
#include "core/report.h"
#include "core/scheduler.h"
#include "model/text_model.h"

namespace dsi {

// Rank layout: 0 coordinator, 1..D drafters, then the targets.
std::string role_of_rank(int rank, int n_drafters, int n_targets);

class Coordinator {
 public:
  using OnCommit = std::function<void(std::span<const Token>)>;

  Coordinator(ControlChannel& ch, int heartbeat_ms, double peer_timeout_s);
  // Runs one generation with n_targets target ranks. on_commit sees tokens as they commit.
  // Raising `stop` (from any thread, or from on_commit) ends the generation at the next
  // message: the tokens committed so far are the report's, and the workers' forwards are
  // preempted (RunReport::stopped).
  RunReport run(const RunConfig& cfg, int n_targets, const OnCommit& on_commit = {},
                const CancelFlag* stop = nullptr);
  // The tokenizer side of a model (cached by path).
  std::shared_ptr<const TextModel> text_model(const std::string& path);
  // Between runs (a server waiting for requests): keeps the workers' heartbeats going and
  // checks they are alive, until `until`. Throws PeerError like run() for a dead rank.
  void idle(Clock::time_point until);
  // Tells every worker to leave its loop with `code`.
  void exit_all(int code);
  // Tensor-parallel layouts (core/tp_group.h): ranks 1..n are the world's drafter groups,
  // whatever a run's mode; a run without drafters (non-SI) leaves them idle and puts its
  // targets after them, on target groups.
  void reserve_drafter_ranks(int n) { reserved_drafters_ = n; }
  // Tensor-parallel layouts: each control-plane rank's world rank and group size, so that
  // messages and reports name ranks as mpirun numbers them ("rank 4 (target 1, world ranks
  // 4-5)").
  void set_world_ranks(std::vector<int> world, std::vector<int> group_size) {
    world_ = std::move(world);
    group_size_ = std::move(group_size);
  }

 private:
  struct Run;  // one run's state (coordinator.cc)
  // The phases of run(): configure the workers and build the scheduler; prefill the prompt;
  // drive the scheduler until generation is done; stop the workers and collect the report.
  std::unique_ptr<Run> configure(const RunConfig& cfg, int n_targets, const OnCommit& on_commit);
  void prefill(Run& r);
  void generate(Run& r, const CancelFlag* stop);
  RunReport finish(Run& r);
  // Every worker's Ready names one vocabulary, which covers the tokenizer's; returns it.
  int check_vocabulary(const std::map<int, Message>& ready, const TextModel* text) const;
  // Sends what the scheduler decided; records commits and rejections for the trace.
  void execute(Run& r, const std::vector<Action>& acts);

  std::optional<Envelope> next(Clock::time_point deadline);
  std::map<int, Message> wait_all(const std::vector<int>& ranks, MsgType type);

  ControlLink ch_;
  std::chrono::milliseconds heartbeat_;
  std::chrono::duration<double> timeout_;
  std::vector<Clock::time_point> last_heard_;
  Clock::time_point next_hb_;
  uint32_t run_ = 0;
  std::vector<std::string> roles_;  // role of each rank in the current run, for messages
  int reserved_drafters_ = 0;
  std::vector<int> world_, group_size_;  // per control rank (empty: the control plane is the world)
  int world_rank(int rank) const;
  std::string role_in_world(int rank) const;
  std::map<std::string, std::shared_ptr<const TextModel>> text_models_;  // by path
  std::string name(int rank) const;
};

}  // namespace dsi
