#include "transport/mpi_channel.h"

#include <fmt/format.h>
#include <sys/prctl.h>

#include <algorithm>
#include <thread>

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
  mpi_check(MPI_Comm_dup(comm, &comm_), "MPI_Comm_dup");
  mpi_errors_return(comm_);
  mpi_check(MPI_Comm_rank(comm_, &rank_), "MPI_Comm_rank");
  mpi_check(MPI_Comm_size(comm_, &size_), "MPI_Comm_size");
}

MpiChannel::~MpiChannel() {
  try {
    flush(Clock::now() + std::chrono::milliseconds(500));
  } catch (const std::exception& e) {
    fmt::print(stderr, "dsi: warning: closing the control channel: {}\n", e.what());
  }
  std::lock_guard lk(send_mu_);
  for (auto& [req, buf] : pending_) {
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
    mpi_check(MPI_Test(&it->first, &done, MPI_STATUS_IGNORE), "MPI_Test");
    it = done ? pending_.erase(it) : std::next(it);
  }
}

void MpiChannel::send(int dst, std::vector<uint8_t> frame, Traffic traffic) {
  std::lock_guard lk(send_mu_);
  reap_locked();
  // Heartbeats say nothing about what comes next: they do not make the channel hot.
  const bool work = traffic == Traffic::kWork;
  if (work) last_activity_ns_ = now_ns();
  auto& [req, buf] = pending_.emplace_back(MPI_REQUEST_NULL, std::move(frame));
  mpi_check(MPI_Isend(buf.data(), static_cast<int>(buf.size()), MPI_BYTE, dst,
                      work ? kWorkTag : kLivenessTag, comm_, &req),
            "MPI_Isend", dst);
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
  // The timer slack is per thread; back-off sleeps this short need it small.
  prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
  int sleep_us = poll_.min_us;
  for (;;) {
    int flag = 0;
    MPI_Status st;
    mpi_check(MPI_Iprobe(MPI_ANY_SOURCE, MPI_ANY_TAG, comm_, &flag, &st), "MPI_Iprobe");
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
    {
      // Completing sends here too keeps buffers from piling up on a rank that mostly listens.
      std::lock_guard slk(send_mu_);
      reap_locked();
    }
    const auto now = Clock::now();
    if (now >= deadline) return std::nullopt;
    const int64_t idle_ns = now_ns() - last_activity_ns_;
    const bool hot = idle_ns < int64_t{poll_.hot_ms} * 1000000;
    const bool cold = idle_ns > int64_t{poll_.cold_ms} * 1000000;
    const int us = hot ? poll_.min_us : sleep_us;
    std::this_thread::sleep_for(
        std::min<Clock::duration>(std::chrono::microseconds(us), deadline - now));
    if (!hot) sleep_us = std::min(sleep_us * 2, cold ? 10 * poll_.max_us : poll_.max_us);
  }
}

}  // namespace dsi
