// ControlChannel over MPI point-to-point on a duplicated communicator. Sends are
// non-blocking (MPI_Isend of an owned buffer, completed lazily), then ring the receiver's
// doorbell when it runs on the same node (transport/doorbell.h). A receive probes MPI_Iprobe
// and, between probes, waits by its policy:
// - adaptive (the default): spins (probes without pause) when every thread of the node's ranks
//   has a CPU of its own (transport/doorbell.h); otherwise spins only for spin_us (default 0)
//   after a work message went either way, then sleeps on its doorbell, so that a peer on the
//   node wakes it at once. Ranks that get no work (idle ranks) never spin, and neither do
//   ranks with fewer CPUs than threads (the spin would take their own compute's CPU);
// - sleep: never spins (always the doorbell);
// - spin: never sleeps (ranks with dedicated cores that want the last microseconds).
// Peers on other nodes ring no bell: their messages are found by re-probing, every poll_min_us
// while the channel is "hot" (a work message went either way in the last hot_ms), backing off
// exponentially to poll_max_us, and to 10 * poll_max_us once idle for cold_ms (ranks a run
// does not use). When every peer shares the node the re-probe is only a safety net (a message
// too large to be sent eagerly), every poll_max_us. Requires MPI_THREAD_MULTIPLE: a worker's
// receiving and working threads both send.
#pragma once

#include <mpi.h>

#include <atomic>
#include <list>
#include <memory>
#include <mutex>
#include <string>

#include "transport/control_channel.h"
#include "transport/doorbell.h"

namespace dsi {

class MpiChannel final : public ControlChannel {
 public:
  enum class Wait { kAdaptive, kSleep, kSpin };
  struct Polling {
    Wait wait = Wait::kAdaptive;
    int spin_us = 0;        // adaptive, oversubscribed: spin this long after a work message
    int threads = 1;        // threads of this rank that need a CPU, the waiting one included
    bool doorbells = true;  // false: poll only (for comparison)
    int min_us = 20;        // sleep between probes while hot
    int max_us = 200;       // longest back-off sleep when idle (bounds the added latency per hop)
    int hot_ms = 25;
    int cold_ms = 1000;  // idle this long: back off further, to 10 * max_us
  };
  MpiChannel(MPI_Comm comm, Polling polling);
  ~MpiChannel() override;
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  void send(int dst, std::vector<uint8_t> frame, Traffic traffic) override;
  std::optional<Frame> recv(Clock::time_point deadline) override;
  // Waits (bounded) for outstanding sends to complete; returns false if some did not.
  bool flush(Clock::time_point deadline);
  // What this channel does while it waits, for logs and benchmarks: "adaptive, spins: doorbells
  // for 2 of 2 ranks; 2 ranks, 2 threads on 2 CPUs on this node", ...
  std::string describe() const;

 private:
  // Completes the sends that have finished; rings the receiver of each again (its message may
  // not have been visible when the send rang: a send that MPI posts later, at a progress call).
  void reap_locked();
  struct Pending {
    MPI_Request req = MPI_REQUEST_NULL;
    int dst = -1;
    bool ring = true;  // rings the receiver's doorbell when it completes (not deferred)
    std::vector<uint8_t> buf;
  };
  MPI_Comm comm_;
  int rank_ = 0;
  int size_ = 0;
  Polling poll_;
  std::unique_ptr<Doorbells> bells_;  // null when shared memory could not be had
  bool spin_ = false;                 // the policy, resolved: spin rather than sleep
  int spin_ns_ = 0;                   // and how long after a work message when not
  std::atomic<int64_t> last_activity_ns_{0};
  std::mutex send_mu_;
  std::list<Pending> pending_;
  std::mutex recv_mu_;
};

}  // namespace dsi
