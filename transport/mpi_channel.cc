#include "transport/mpi_channel.h"

#include <fmt/format.h>

#include <algorithm>
#include <thread>

#include "common/cpu_relax.h"
#include "common/error.h"
#include "common/futex.h"
#include "transport/mpi_check.h"

namespace dsi {
namespace {
// Work and liveness frames travel under their own tags, so that a receiver knows a heartbeat
// without decoding it.
constexpr int kWorkTag = 17;
constexpr int kLivenessTag = 20;
}  // namespace

namespace {
int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch())
      .count();
}

}  // namespace

MpiChannel::MpiChannel(MPI_Comm comm, Polling polling) : poll_(polling) {
  poll_.min_us = std::max(1, poll_.min_us);
  poll_.max_us = std::max(poll_.min_us, poll_.max_us);
  poll_.spin_us = std::max(0, poll_.spin_us);
  mpi_check(MPI_Comm_dup(comm, &comm_), "MPI_Comm_dup");
  mpi_errors_return(comm_);
  mpi_check(MPI_Comm_rank(comm_, &rank_), "MPI_Comm_rank");
  mpi_check(MPI_Comm_size(comm_, &size_), "MPI_Comm_size");
  try {
    if (poll_.doorbells) bells_ = std::make_unique<Doorbells>(comm_, poll_.threads);
  } catch (const TransportError& e) {
    // Every rank of the node fails alike (the construction agrees on it): all of them poll.
    if (rank_ == 0) {
      fmt::print(stderr, "dsi: warning: {}; control messages are found by polling\n",
                 error_message(e));
    }
  }
  spin_ = poll_.wait == Wait::kSpin ||
          (poll_.wait == Wait::kAdaptive && bells_ && !bells_->oversubscribed());
  const bool short_spin = poll_.wait == Wait::kAdaptive && !spin_ && !(bells_ && bells_->crowded());
  spin_ns_ = short_spin ? poll_.spin_us * 1000 : 0;
}

std::string MpiChannel::describe() const {
  const char* name = poll_.wait == Wait::kSpin    ? "spin"
                     : poll_.wait == Wait::kSleep ? "sleep"
                                                  : "adaptive";
  if (!bells_) {
    return fmt::format("{}, {}: no doorbells, polling every {}-{} us", name,
                       spin_ ? "spins" : "sleeps", poll_.min_us, poll_.max_us);
  }
  int local = 0;
  for (int r = 0; r < size_; ++r) local += bells_->has(r);
  const std::string how = spin_ ? std::string("spins")
                          : spin_ns_ > 0
                              ? fmt::format("spins {} us after work, then sleeps", spin_ns_ / 1000)
                              : std::string("sleeps");
  return fmt::format("{}, {}: doorbells for {} of {} ranks; {} ranks, {} threads on {} CPUs on "
                     "this node",
                     name, how, local, size_, bells_->node_ranks(), bells_->node_threads(),
                     bells_->node_cpus());
}

MpiChannel::~MpiChannel() {
  try {
    flush(Clock::now() + std::chrono::milliseconds(500));
  } catch (const std::exception& e) {
    fmt::print(stderr, "dsi: warning: closing the control channel: {}\n", e.what());
  }
  std::lock_guard lk(send_mu_);
  for (auto& [req, dst, ring, buf] : pending_) {
    if (req == MPI_REQUEST_NULL) continue;
    mpi_warn(MPI_Cancel(&req), "MPI_Cancel");
    mpi_warn(MPI_Request_free(&req), "MPI_Request_free");
  }
  pending_.clear();
  mpi_warn(MPI_Comm_free(&comm_), "MPI_Comm_free");
}

void MpiChannel::reap_locked() {
  for (auto it = pending_.begin(); it != pending_.end();) {
    int done = 0;
    mpi_check(MPI_Test(&it->req, &done, MPI_STATUS_IGNORE), "MPI_Test");
    if (!done) {
      ++it;
      continue;
    }
    if (bells_ && it->ring) bells_->ring(it->dst);
    it = pending_.erase(it);
  }
}

void MpiChannel::send(int dst, std::vector<uint8_t> frame, Traffic traffic) {
  std::lock_guard lk(send_mu_);
  reap_locked();
  // Heartbeats say nothing about what comes next: they do not make the channel hot.
  const bool work = traffic != Traffic::kLiveness;
  const bool ring = traffic != Traffic::kDeferred;
  if (work) last_activity_ns_ = now_ns();
  Pending& p = pending_.emplace_back(Pending{MPI_REQUEST_NULL, dst, ring, std::move(frame)});
  const int rc = MPI_Isend(p.buf.data(), static_cast<int>(p.buf.size()), MPI_BYTE, dst,
                           work ? kWorkTag : kLivenessTag, comm_, &p.req);
  if (rc != MPI_SUCCESS) pending_.pop_back();
  mpi_check(rc, "MPI_Isend", dst);
  // Ring now (a small message is usually in the receiver's queue already) and again when the
  // send completes (reap_locked), so that the receiver never sleeps through a message that MPI
  // delivered after the first ring.
  if (bells_ && ring) bells_->ring(dst);
  int done = 0;
  mpi_check(MPI_Test(&p.req, &done, MPI_STATUS_IGNORE), "MPI_Test", dst);
  if (done) pending_.pop_back();
}

bool MpiChannel::flush(Clock::time_point deadline) {
  for (;;) {
    {
      std::lock_guard lk(send_mu_);
      reap_locked();
      if (pending_.empty()) return true;
    }
    if (Clock::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::microseconds(100));
  }
}

std::optional<Frame> MpiChannel::recv(Clock::time_point deadline) {
  std::lock_guard lk(recv_mu_);
  // With every peer on the node, each message rings: re-probing is a safety net only.
  const bool rung = bells_ && bells_->all_local();
  int sleep_us = poll_.min_us;
  for (;;) {
    // The count is read before the probe: a message posted after the probe rings past it.
    const uint32_t seen = bells_ ? bells_->count() : 0;
    int flag = 0;
    MPI_Status st;
    // Twice: an MPI_Iprobe that finds nothing progresses the transport, which may move a
    // message that has just arrived into the queue that the next probe sees (Open MPI's ob1);
    // sleeping after the first would miss the message that rang the bell.
    for (int probe = 0; probe < 2 && !flag; ++probe) {
      mpi_check(MPI_Iprobe(MPI_ANY_SOURCE, MPI_ANY_TAG, comm_, &flag, &st), "MPI_Iprobe");
    }
    if (flag) {
      int count = 0;
      mpi_check(MPI_Get_count(&st, MPI_BYTE, &count), "MPI_Get_count", st.MPI_SOURCE);
      std::vector<uint8_t> buf(count);
      mpi_check(MPI_Recv(buf.data(), count, MPI_BYTE, st.MPI_SOURCE, st.MPI_TAG, comm_,
                         MPI_STATUS_IGNORE),
                "MPI_Recv", st.MPI_SOURCE);
      if (st.MPI_TAG == kWorkTag) last_activity_ns_ = now_ns();
      return Frame{st.MPI_SOURCE, std::move(buf)};
    }
    bool sending = false;
    {
      // Completing sends here too keeps buffers from piling up on a rank that mostly listens,
      // and progresses them: a send still pending re-probes every poll_min_us.
      std::lock_guard slk(send_mu_);
      if (!pending_.empty()) reap_locked();
      sending = !pending_.empty();
    }
    const auto now = Clock::now();
    if (now >= deadline) return std::nullopt;
    const int64_t idle_ns =
        std::chrono::duration_cast<std::chrono::nanoseconds>(now.time_since_epoch()).count() -
        last_activity_ns_;
    if (spin_ || idle_ns < spin_ns_) {
      cpu_relax();
      continue;
    }
    const bool hot = idle_ns < int64_t{poll_.hot_ms} * 1000000;
    const bool cold = idle_ns > int64_t{poll_.cold_ms} * 1000000;
    // A send still pending needs this rank's progress to go out: re-probe every 20 us.
    const int us = sending ? std::min(poll_.min_us, 20)
                   : rung  ? (cold ? 10 * poll_.max_us : poll_.max_us)
                   : hot   ? poll_.min_us
                           : sleep_us;
    const auto until = std::min<Clock::time_point>(now + std::chrono::microseconds(us), deadline);
    if (bells_) {
      bells_->wait(seen, until);
    } else {
      fine_timer_slack();  // the doorbell's futex sets it itself
      std::this_thread::sleep_until(until);
    }
    if (!hot) sleep_us = std::min(sleep_us * 2, cold ? 10 * poll_.max_us : poll_.max_us);
  }
}

}  // namespace dsi
