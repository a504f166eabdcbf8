// ControlChannel over MPI point-to-point on a duplicated communicator. Sends are
// non-blocking (MPI_Isend of an owned buffer, completed lazily). Receives poll MPI_Iprobe and
// sleep between probes so that a waiting rank does not spin a core (tests run 8+ ranks on 2
// cores): every poll_min_us while the channel is "hot" (a message went either way in the last
// hot_ms, so another is likely soon), then backing off exponentially to poll_max_us, and to
// 10 * poll_max_us once idle for cold_ms (ranks a run does not use). Requires
// MPI_THREAD_MULTIPLE: a worker's communication and compute threads both send.
#pragma once

#include <mpi.h>

#include <atomic>
#include <list>
#include <mutex>

#include "transport/control_channel.h"

namespace dsi {

class MpiChannel final : public ControlChannel {
 public:
  struct Polling {
    int min_us = 20;   // sleep between probes while hot
    int max_us = 200;  // longest back-off sleep when idle (bounds the added latency per hop)
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

 private:
  void reap_locked();
  MPI_Comm comm_;
  int rank_ = 0;
  int size_ = 0;
  Polling poll_;
  std::atomic<int64_t> last_activity_ns_{0};
  std::mutex send_mu_;
  std::list<std::pair<MPI_Request, std::vector<uint8_t>>> pending_;
  std::mutex recv_mu_;
};

}  // namespace dsi
