// MPI host buffers (transport/mpi_data_channel.h).
#include "transport/mpi_data_channel.h"

#include <cstring>
#include <limits>
#include <list>
#include <map>
#include <mutex>
#include <stdexcept>
#include <thread>

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
    MPI_Comm_dup(comm, &comm_);
  }
  ~MpiDataChannel() override {
    const auto deadline = Clock::now() + std::chrono::milliseconds(500);
    for (;;) {
      std::lock_guard lk(mu_);
      reap_locked();
      if (pending_.empty() || Clock::now() >= deadline) break;
    }
    std::lock_guard lk(mu_);
    for (auto& [req, buf] : pending_) {
      MPI_Cancel(&req);
      MPI_Request_free(&req);
    }
    MPI_Comm_free(&comm_);
  }

  void send(int dst, const DataKey& key, std::vector<uint8_t> bytes) override {
    if (bytes.size() > static_cast<size_t>(std::numeric_limits<int>::max())) {
      throw std::length_error("a data transfer of 2 GiB or more");
    }
    const DataHeader h{key.run, static_cast<uint32_t>(key.kind), key.stream, key.index, bytes.size()};
    std::vector<uint8_t> hb(sizeof h);
    std::memcpy(hb.data(), &h, sizeof h);
    std::lock_guard lk(mu_);
    reap_locked();
    auto& [hreq, hbuf] = pending_.emplace_back(MPI_REQUEST_NULL, std::move(hb));
    MPI_Isend(hbuf.data(), static_cast<int>(hbuf.size()), MPI_BYTE, dst, kHeaderTag, comm_, &hreq);
    auto& [preq, pbuf] = pending_.emplace_back(MPI_REQUEST_NULL, std::move(bytes));
    MPI_Isend(pbuf.data(), static_cast<int>(pbuf.size()), MPI_BYTE, dst, kPayloadTag, comm_, &preq);
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
  void reap_locked() {
    for (auto it = pending_.begin(); it != pending_.end();) {
      int done = 0;
      MPI_Test(&it->first, &done, MPI_STATUS_IGNORE);
      it = done ? pending_.erase(it) : std::next(it);
    }
  }
  // Moves every transfer that has arrived into the stash.
  void drain() {
    std::lock_guard lk(mu_);
    reap_locked();
    for (;;) {
      int flag = 0;
      MPI_Status st;
      MPI_Iprobe(MPI_ANY_SOURCE, kHeaderTag, comm_, &flag, &st);
      if (!flag) return;
      DataHeader h;
      MPI_Recv(&h, sizeof h, MPI_BYTE, st.MPI_SOURCE, kHeaderTag, comm_, MPI_STATUS_IGNORE);
      // The payload was sent right after its header: it is arriving.
      std::vector<uint8_t> payload(h.bytes);
      MPI_Recv(payload.data(), static_cast<int>(h.bytes), MPI_BYTE, st.MPI_SOURCE, kPayloadTag,
               comm_, MPI_STATUS_IGNORE);
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
