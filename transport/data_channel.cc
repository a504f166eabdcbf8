#include "transport/data_channel.h"

#include <cstring>
#include <limits>
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

}  // namespace dsi
