#include <atomic>

#include "transport/control_channel.h"

namespace dsi {

class LoopbackChannel final : public ControlChannel {
 public:
  LoopbackChannel(LoopbackHub* hub, int rank) : hub_(hub), rank_(rank) {}
  int rank() const override { return rank_; }
  int size() const override { return static_cast<int>(hub_->boxes_.size()); }

  void send(int dst, std::vector<uint8_t> frame, Traffic) override {
    if (hub_->dead(rank_) || hub_->dead(dst)) return;
    auto& box = *hub_->boxes_.at(dst);
    {
      std::lock_guard lk(box.mu);
      box.q.emplace_back(rank_, std::move(frame));
    }
    box.cv.notify_one();
  }

  std::optional<Frame> recv(Clock::time_point deadline) override {
    auto& box = *hub_->boxes_.at(rank_);
    std::unique_lock lk(box.mu);
    if (!box.cv.wait_until(lk, deadline, [&] { return !box.q.empty(); })) return std::nullopt;
    auto [src, bytes] = std::move(box.q.front());
    box.q.pop_front();
    lk.unlock();
    if (hub_->dead(rank_)) return std::nullopt;
    return Frame{src, std::move(bytes)};
  }

 private:
  LoopbackHub* hub_;
  int rank_;
};

LoopbackHub::LoopbackHub(int size) : dead_(size) {
  for (int i = 0; i < size; ++i) boxes_.push_back(std::make_unique<Box>());
}

std::unique_ptr<ControlChannel> LoopbackHub::channel(int rank) {
  return std::make_unique<LoopbackChannel>(this, rank);
}

void LoopbackHub::kill(int rank) {
  dead_.at(rank).store(true);
}
bool LoopbackHub::dead(int rank) const {
  return dead_.at(rank).load();
}

}  // namespace dsi
