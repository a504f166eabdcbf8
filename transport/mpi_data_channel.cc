// MPI host buffers (transport/mpi_data_channel.h).
#include "transport/mpi_data_channel.h"

#include <cstring>
#include <limits>
#include <list>
#include <map>
#include <mutex>
#include <stdexcept>
#include <thread>

#include "transport/mpi_check.h"

namespace dsi {

namespace {

// A transfer is two messages to the same rank: its header (tag kHeaderTag), then its payload
// (kPayloadTag), sent straight from the caller's vector and received straight into the
// stashed one. MPI does not overtake between one pair and tag, so the next payload from a
// rank is the one its last header announced.
constexpr int kHeaderTag = 18;
constexpr int kPayloadTag = 19;

struct DataHeader {
  uint32_t run;
  uint32_t kind;
  uint64_t stream;
  int64_t index;
  uint64_t bytes;
};
static_assert(sizeof(DataHeader) == 32);

class MpiDataChannel final : public DataChannel {
 public:
  MpiDataChannel(MPI_Comm comm, int poll_us) : poll_us_(std::max(1, poll_us)) {
    mpi_check(MPI_Comm_dup(comm, &comm_), "MPI_Comm_dup");
    mpi_errors_return(comm_);
  }
  ~MpiDataChannel() override {
    const auto deadline = Clock::now() + std::chrono::milliseconds(500);
    for (;;) {
      {
        std::lock_guard lk(mu_);
        if (!reap_locked(/*may_throw=*/false) || pending_.empty() || Clock::now() >= deadline) {
          break;
        }
      }
      // Waiting for the peers to take the last sends: no need to spin a shared core.
      std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
    std::lock_guard lk(mu_);
    for (auto& [req, buf] : pending_) {
      if (req == MPI_REQUEST_NULL) continue;
      mpi_warn(MPI_Cancel(&req), "MPI_Cancel");
      mpi_warn(MPI_Request_free(&req), "MPI_Request_free");
    }
    mpi_warn(MPI_Comm_free(&comm_), "MPI_Comm_free");
  }

  void send(int dst, const DataKey& key, std::vector<uint8_t> bytes) override {
    if (bytes.size() > static_cast<size_t>(std::numeric_limits<int>::max())) {
      throw std::length_error("a data transfer of 2 GiB or more");
    }
    const DataHeader h{key.run, static_cast<uint32_t>(key.kind), key.stream, key.index,
                       bytes.size()};
    std::vector<uint8_t> hb(sizeof h);
    std::memcpy(hb.data(), &h, sizeof h);
    std::lock_guard lk(mu_);
    reap_locked();
    auto& [hreq, hbuf] = pending_.emplace_back(MPI_REQUEST_NULL, std::move(hb));
    mpi_check(MPI_Isend(hbuf.data(), static_cast<int>(hbuf.size()), MPI_BYTE, dst, kHeaderTag,
                        comm_, &hreq),
              "MPI_Isend", dst);
    auto& [preq, pbuf] = pending_.emplace_back(MPI_REQUEST_NULL, std::move(bytes));
    mpi_check(MPI_Isend(pbuf.data(), static_cast<int>(pbuf.size()), MPI_BYTE, dst, kPayloadTag,
                        comm_, &preq),
              "MPI_Isend", dst);
  }

  bool recv(const DataKey& key, std::vector<uint8_t>& out, Clock::time_point deadline,
            const CancelFlag* cancel) override {
    for (;;) {
      drain();
      {
        std::lock_guard lk(mu_);
        auto it = stash_.find(key);
        if (it != stash_.end()) {
          out = it->second;
          return true;
        }
      }
      if ((cancel && cancel->cancelled()) || Clock::now() >= deadline) return false;
      std::this_thread::sleep_for(std::chrono::microseconds(poll_us_));
    }
  }

  void discard(const std::function<bool(const DataKey&)>& stale) override {
    drain();
    std::lock_guard lk(mu_);
    std::erase_if(stash_, [&](const auto& kv) { return stale(kv.first); });
  }

 private:
  // Forgets completed sends. With may_throw false (destructor) a failed test is reported on
  // stderr and ends the reaping (returns false) instead of throwing.
  bool reap_locked(bool may_throw = true) {
    for (auto it = pending_.begin(); it != pending_.end();) {
      int done = 0;
      const int rc = MPI_Test(&it->first, &done, MPI_STATUS_IGNORE);
      if (rc != MPI_SUCCESS) {
        if (may_throw) mpi_check(rc, "MPI_Test");
        mpi_warn(rc, "MPI_Test");
        return false;
      }
      it = done ? pending_.erase(it) : std::next(it);
    }
    return true;
  }
  // Moves every transfer that has arrived into the stash.
  void drain() {
    std::lock_guard lk(mu_);
    reap_locked();
    for (;;) {
      int flag = 0;
      MPI_Status st;
      mpi_check(MPI_Iprobe(MPI_ANY_SOURCE, kHeaderTag, comm_, &flag, &st), "MPI_Iprobe");
      if (!flag) return;
      DataHeader h;
      mpi_check(
          MPI_Recv(&h, sizeof h, MPI_BYTE, st.MPI_SOURCE, kHeaderTag, comm_, MPI_STATUS_IGNORE),
          "MPI_Recv", st.MPI_SOURCE);
      // The payload was sent right after its header: it is arriving.
      std::vector<uint8_t> payload(h.bytes);
      mpi_check(MPI_Recv(payload.data(), static_cast<int>(h.bytes), MPI_BYTE, st.MPI_SOURCE,
                         kPayloadTag, comm_, MPI_STATUS_IGNORE),
                "MPI_Recv", st.MPI_SOURCE);
      stash_[DataKey{h.run, static_cast<DataKind>(h.kind), h.stream, h.index}] = std::move(payload);
    }
  }

  MPI_Comm comm_;
  int poll_us_;
  std::mutex mu_;
  std::list<std::pair<MPI_Request, std::vector<uint8_t>>> pending_;
  std::map<DataKey, std::vector<uint8_t>> stash_;
};

}  // namespace

std::unique_ptr<DataChannel> make_mpi_data_channel(MPI_Comm comm, int poll_us) {
  return std::make_unique<MpiDataChannel>(comm, poll_us);
}

}  // namespace dsi
