// ControlChannel over MPI point-to-point on a duplicated communicator. Sends are
// non-blocking (MPI_Isend of an owned buffer, completed lazily); receives poll MPI_Iprobe with
// an exponential back-off sleep so that a waiting rank does not spin a core (tests run 8+
// ranks on 2 cores). Requires MPI_THREAD_MULTIPLE: a worker's communication and compute
// threads both send.
#pragma once

#include <mpi.h>

#include <list>
#include <mutex>

#include "runtime/channel.h"

namespace dsi {

class MpiChannel final : public ControlChannel {
 public:
  // poll_max_us: longest back-off sleep between probes (bounds the added latency per hop).
  MpiChannel(MPI_Comm comm, int poll_max_us);
  ~MpiChannel() override;
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  void send(int dst, const Message& m) override;
  std::optional<Envelope> recv(Clock::time_point deadline) override;
  // Waits (bounded) for outstanding sends to complete; returns false if some did not.
  bool flush(Clock::time_point deadline);

 private:
  void reap_locked();
  MPI_Comm comm_;
  int rank_ = 0;
  int size_ = 0;
  int poll_max_us_;
  std::mutex send_mu_;
  std::list<std::pair<MPI_Request, std::vector<uint8_t>>> pending_;
  std::mutex recv_mu_;
};

}  // namespace dsi
