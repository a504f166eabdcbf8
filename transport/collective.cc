// The loopback twin of transport/collective.h: threads meet at a generation barrier.
#include "transport/collective.h"

#include <condition_variable>
#include <mutex>
#include <string>
#include <vector>

namespace dsi {

struct LoopbackCollectiveHub::State {
  int size;
  std::chrono::milliseconds timeout;
  std::mutex mu;
  std::condition_variable cv;
  uint64_t generation = 0;  // completed all-reduces
  int arrived = 0;          // ranks in the current one
  int left = 0;             // ranks that took the current one's result
  std::vector<std::vector<float>> parts;
  std::vector<float> sum;
};

namespace {

class LoopbackCollective final : public Collective {
 public:
  LoopbackCollective(LoopbackCollectiveHub::State& s, int rank) : s_(s), rank_(rank) {}
  int rank() const override { return rank_; }
  int size() const override { return s_.size; }

  bool all_reduce(std::span<float> data, bool stop, std::chrono::milliseconds longer) override {
    std::unique_lock lk(s_.mu);
    waited_ = s_.timeout + longer;
    const auto deadline = std::chrono::steady_clock::now() + waited_;
    // The previous all-reduce's result must be taken by every rank before this one starts.
    if (!s_.cv.wait_until(lk, deadline, [&] { return s_.left == 0; })) timeout("finish");
    const uint64_t gen = s_.generation;
    // The stop flag rides as one more element.
    s_.parts[rank_].assign(data.begin(), data.end());
    s_.parts[rank_].push_back(stop ? 1.0f : 0.0f);
    if (++s_.arrived == s_.size) {
      s_.sum.assign(data.size() + 1, 0.0f);
      for (const auto& p : s_.parts) {
        if (p.size() != data.size() + 1) throw std::invalid_argument("all_reduce: lengths differ");
        for (size_t i = 0; i < p.size(); ++i) s_.sum[i] += p[i];
      }
      s_.arrived = 0;
      s_.left = s_.size;
      ++s_.generation;
      s_.cv.notify_all();
    } else if (!s_.cv.wait_until(lk, deadline, [&] { return s_.generation != gen; })) {
      --s_.arrived;
      timeout("join");
    }
    std::copy(s_.sum.begin(), s_.sum.end() - 1, data.begin());
    const bool any_stop = s_.sum.back() > 0;
    if (--s_.left == 0) s_.cv.notify_all();
    return any_stop;
  }

 private:
  [[noreturn]] void timeout(const char* what) {
    throw CollectiveTimeout("all-reduce: rank " + std::to_string(rank_) + " of " +
                            std::to_string(s_.size) + " waited " + std::to_string(waited_.count()) +
                            " ms for its peers to " + what);
  }
  LoopbackCollectiveHub::State& s_;
  std::chrono::milliseconds waited_{0};
  int rank_;
};

}  // namespace

LoopbackCollectiveHub::LoopbackCollectiveHub(int size, std::chrono::milliseconds timeout)
    : state_(new State{.size = size, .timeout = timeout}) {
  if (size < 1) throw std::invalid_argument("a collective group needs at least one rank");
  state_->parts.resize(size);
}

LoopbackCollectiveHub::~LoopbackCollectiveHub() = default;

std::unique_ptr<Collective> LoopbackCollectiveHub::member(int rank) {
  if (rank < 0 || rank >= state_->size) throw std::out_of_range("no such rank in the group");
  return std::make_unique<LoopbackCollective>(*state_, rank);
}

}  // namespace dsi
