// Doorbells: one futex word per rank, in memory that the ranks of a node share (a POSIX
// shared-memory object), so that a rank waiting for control messages sleeps in the kernel and a
// peer on its node wakes it the moment it has sent one, instead of the waiter finding the
// message at its next poll. Ranks on other nodes have no bell here: their messages are found by
// polling (transport/mpi_channel.h).
//
// Protocol: a waiter reads its count, probes MPI, and sleeps only while the count is still the
// one it read; a sender posts its message first, then rings (adds one to the peer's count and
// wakes it if it sleeps). A message posted before the count was read is found by the probe, one
// posted after it changes the count: no wake-up is lost. A message that the probe cannot see
// yet when the bell rings (one too large to be sent eagerly) is found by the waiter's bounded
// re-probe.
//
// The construction also tells whether the node's ranks have a CPU for every thread they run
// (their own affinity masks, and the union of the node's, against the threads they declare):
// spinning is worth it only then.
#pragma once

#include <mpi.h>

#include <atomic>
#include <cstdint>
#include <vector>

#include "common/cancel.h"

namespace dsi {

class Doorbells {
 public:
  // Collective over `comm`. `threads`: the threads this rank runs, the waiting one included.
  // Throws TransportError (on every rank of the node alike) when the shared memory cannot be
  // had.
  Doorbells(MPI_Comm comm, int threads);
  ~Doorbells();
  Doorbells(const Doorbells&) = delete;
  Doorbells& operator=(const Doorbells&) = delete;

  // Whether `rank` (of comm) has a bell here: it runs on this node.
  bool has(int rank) const {
    return rank >= 0 && static_cast<size_t>(rank) < bells_.size() &&
           bells_[static_cast<size_t>(rank)] != nullptr;
  }
  // Whether every rank of comm runs on this node.
  bool all_local() const { return all_local_; }
  // Ranks on this node, the threads they run and the CPUs they may run on together.
  int node_ranks() const { return node_ranks_; }
  int node_threads() const { return node_threads_; }
  int node_cpus() const { return node_cpus_; }
  // Some thread on this node has no CPU of its own (here or in total).
  bool oversubscribed() const { return oversubscribed_; }
  // This rank's threads have fewer CPUs than threads (mpirun binds each rank to one core): a
  // spinning thread would take the CPU of its own rank's compute.
  bool crowded() const { return crowded_; }

  // This rank's count, to read before probing for messages.
  uint32_t count() const { return mine_->count.load(std::memory_order_seq_cst); }
  // After a message to `rank` has been posted: wakes it if it sleeps. A no-op for ranks on
  // other nodes.
  void ring(int rank);
  // Sleeps until this rank's count differs from `seen` or `deadline` passes. Returns whether
  // the count changed.
  bool wait(uint32_t seen, Clock::time_point deadline);

 private:
  struct alignas(64) Bell {
    std::atomic<uint32_t> count{0};
    std::atomic<uint32_t> sleepers{0};
  };

  MPI_Comm node_ = MPI_COMM_NULL;
  void* base_ = nullptr;
  size_t bytes_ = 0;
  std::vector<Bell*> bells_;  // by rank of comm; null for ranks on other nodes
  Bell* mine_ = nullptr;
  bool all_local_ = false;
  int node_ranks_ = 1;
  int node_threads_ = 1;
  int node_cpus_ = 1;
  bool oversubscribed_ = true;
  bool crowded_ = true;
};

}  // namespace dsi
