#include "runtime/data_channel.h"

#include <mpi.h>

#include <cstring>
#include <list>
#include <stdexcept>
#include <thread>

namespace dsi {

void DataChannel::send_device(int, const DataKey&, const void*, size_t, void*) {
  throw std::logic_error("this data channel moves host memory only");
}

bool DataChannel::recv_device(const DataKey&, void*, size_t, void*, Clock::time_point,
                              const CancelFlag*) {
  throw std::logic_error("this data channel moves host memory only");
}

class LoopbackDataChannel final : public DataChannel {
 public:
  LoopbackDataChannel(LoopbackDataHub* hub, int rank) : hub_(hub), rank_(rank) {}
  void send(int dst, const DataKey& key, std::vector<uint8_t> bytes) override {
    auto& box = *hub_->boxes_.at(dst);
    {
      std::lock_guard lk(box.mu);
      box.items[key] = std::move(bytes);
    }
    box.cv.notify_all();
  }
  bool recv(const DataKey& key, std::vector<uint8_t>& out, Clock::time_point deadline,
            const CancelFlag* cancel) override {
    auto& box = *hub_->boxes_.at(rank_);
    std::unique_lock lk(box.mu);
    for (;;) {
      auto it = box.items.find(key);
      if (it != box.items.end()) {
        out = it->second;
        return true;
      }
      if ((cancel && cancel->cancelled()) || Clock::now() >= deadline) return false;
      // Short waits so that a raised cancel flag is seen promptly.
      box.cv.wait_until(lk, std::min(deadline, Clock::now() + std::chrono::microseconds(200)));
    }
  }
  void discard(const std::function<bool(const DataKey&)>& stale) override {
    auto& box = *hub_->boxes_.at(rank_);
    std::lock_guard lk(box.mu);
    std::erase_if(box.items, [&](const auto& kv) { return stale(kv.first); });
  }

 private:
  LoopbackDataHub* hub_;
  int rank_;
};

LoopbackDataHub::LoopbackDataHub(int size) {
  for (int i = 0; i < size; ++i) boxes_.push_back(std::make_unique<Box>());
}

std::unique_ptr<DataChannel> LoopbackDataHub::channel(int rank) {
  return std::make_unique<LoopbackDataChannel>(this, rank);
}

namespace {

constexpr int kDataTag = 18;

// Wire header of one MPI data transfer, followed by the payload.
struct DataHeader {
  uint32_t run;
  uint32_t kind;
  uint64_t stream;
  int64_t index;
};
static_assert(sizeof(DataHeader) == 24);

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
    std::vector<uint8_t> buf(sizeof(DataHeader) + bytes.size());
    DataHeader h{key.run, static_cast<uint32_t>(key.kind), key.stream, key.index};
    std::memcpy(buf.data(), &h, sizeof h);
    std::memcpy(buf.data() + sizeof h, bytes.data(), bytes.size());
    std::lock_guard lk(mu_);
    reap_locked();
    auto& [req, b] = pending_.emplace_back(MPI_REQUEST_NULL, std::move(buf));
    MPI_Isend(b.data(), static_cast<int>(b.size()), MPI_BYTE, dst, kDataTag, comm_, &req);
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
      MPI_Iprobe(MPI_ANY_SOURCE, kDataTag, comm_, &flag, &st);
      if (!flag) return;
      int count = 0;
      MPI_Get_count(&st, MPI_BYTE, &count);
      std::vector<uint8_t> buf(count);
      MPI_Recv(buf.data(), count, MPI_BYTE, st.MPI_SOURCE, kDataTag, comm_, MPI_STATUS_IGNORE);
      if (count < static_cast<int>(sizeof(DataHeader))) continue;  // not ours
      DataHeader h;
      std::memcpy(&h, buf.data(), sizeof h);
      stash_[DataKey{h.run, static_cast<DataKind>(h.kind), h.stream, h.index}] =
          std::vector<uint8_t>(buf.begin() + sizeof h, buf.end());
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
