// ThreadPool (common/thread_pool.h). Indices are handed out one at a time under the
// mutex: jobs here are a few dozen coarse items (heads), so contention does not matter.
#include "common/thread_pool.h"

namespace dsi {

ThreadPool::ThreadPool(int threads) {
  for (int i = 1; i < threads; ++i) workers_.emplace_back([this] { worker_loop(); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  start_cv_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::parallel_for(int n, const std::function<void(int)>& fn) {
  if (workers_.empty() || n <= 1) {
    for (int i = 0; i < n; ++i) fn(i);
    return;
  }
  std::unique_lock<std::mutex> lock(mu_);
  fn_ = &fn;
  n_ = n;
  next_ = 0;
  busy_ = static_cast<int>(workers_.size());
  ++job_id_;
  start_cv_.notify_all();
  while (next_ < n_) {
    const int i = next_++;
    lock.unlock();
    fn(i);
    lock.lock();
  }
  done_cv_.wait(lock, [this] { return busy_ == 0; });
  fn_ = nullptr;
}

void ThreadPool::worker_loop() {
  unsigned seen = 0;
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    start_cv_.wait(lock, [&] { return stop_ || job_id_ != seen; });
    if (stop_) return;
    seen = job_id_;
    while (next_ < n_) {
      const int i = next_++;
      lock.unlock();
      (*fn_)(i);
      lock.lock();
    }
    if (--busy_ == 0) done_cv_.notify_one();
  }
}

}  // namespace dsi
