// Tensor-parallel rank groups (roles.target_tp, roles.drafter_tp): a target or a drafter is a
// group of ranks that shard one model (engines/llama, LlamaEngineOptions::tp). The group's
// first rank, its leader, is the worker the coordinator knows: it runs the worker loop as any
// worker does, over an engine that hands every call on to the other ranks of its group (the
// members) before it computes its own shard. Members run no worker loop: they wait for their
// leader's calls and make them on their shard, and the per-layer all-reduces keep the group in
// step. A cancel reaches the leader only; it rides in the next all-reduce (every shard stops at
// the same layer), so the leader never skips a call it has handed on and no shard waits in a
// collective its peers left.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/config.h"
#include "engines/engine.h"
#include "engines/engine_factory.h"
#include "transport/collective.h"
#include "transport/control_channel.h"
#include "transport/data_channel.h"

namespace dsi {

// Where one world rank sits in a run's layout: rank 0 the coordinator, then each drafter's
// group (drafter_tp ranks), then each target's group (target_tp ranks), each group's ranks
// consecutive (so that block-mapped launches keep a group on one node).
struct RankPlace {
  enum class Kind { kCoordinator, kDrafter, kTarget };
  Kind kind = Kind::kCoordinator;
  int index = 0;       // drafter or target index
  int shard = 0;       // rank within its group; 0: the leader
  int group_size = 1;  // ranks of its group
  int first = 0;       // world rank of its group's leader
  int control = 0;     // rank on the control plane (coordinator and leaders); -1: a member
  bool leader() const { return shard == 0; }
  // "target 1 (world ranks 5-6)", "drafter 0 (world rank 1)", "the coordinator".
  std::string group_name() const;
};

// The layout of a world of `world` ranks for `cfg` (cfg.n_targets(world) must hold).
std::vector<RankPlace> rank_layout(const RunConfig& cfg, int world);

// A group that can no longer run in step (a peer missed a collective, a shard failed): prints
// the reason and ends the job; it does not return.
using GroupFatal = std::function<void(const std::string& why)>;

// What one rank of a group works with (ranks of `ch` and `coll`: 0 the leader, then members).
struct GroupContext {
  ControlChannel* ch = nullptr;  // the leader's calls to its members
  Collective* coll = nullptr;    // the group's all-reduces
  std::string name;              // "target 1 (world ranks 5-6)", for errors
  GroupFatal fatal;
  // KV handoff between target groups, shard i to shard i: a member's channel to the same shard
  // of every target group (its ranks: the target indices); the leaders use the control plane's.
  DataChannel* shard_data = nullptr;
  bool kv_handoff = false;  // a target group whose members have shard_data
  int first_target = 1;     // control rank of target 0 (a leader maps a handoff's peer to a target)
};

// The leader's side: builds its shard over ctx.coll and tells the members to build theirs; a
// member that fails is named (its own error is on its stderr). The engine hands each call on.
std::unique_ptr<Engine> make_group_leader_engine(const EngineSpec& spec, const GroupContext& ctx);

// Tells the members that the leader is done (they return from run_group_member).
void end_group(ControlChannel& group);

// A member's loop: makes its leader's calls on its shard until the leader ends the group.
void run_group_member(const GroupContext& ctx);

}  // namespace dsi
