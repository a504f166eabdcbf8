// ThreadPool (common/thread_pool.h).
#include "common/thread_pool.h"

#include <chrono>

#include "common/cpu_relax.h"

namespace dsi {
namespace {

// Spins until done() or kSpinMicros have passed; returns done().
template <class Done>
bool spin_until(Done done) {
  using Clock = std::chrono::steady_clock;
  const auto until = Clock::now() + std::chrono::microseconds(ThreadPool::kSpinMicros);
  for (int i = 0;; ++i) {
    if (done()) return true;
    cpu_relax();
    if (i % 64 == 63 && Clock::now() > until) return done();
  }
}

}  // namespace

ThreadPool::ThreadPool(int threads) {
  for (int i = 1; i < threads; ++i) workers_.emplace_back([this] { worker_loop(); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_.store(true);
  }
  start_cv_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::work() {
  for (int i = next_.fetch_add(1, std::memory_order_relaxed); i < n_;
       i = next_.fetch_add(1, std::memory_order_relaxed)) {
    (*fn_)(i);
  }
}

void ThreadPool::parallel_for(int n, const std::function<void(int)>& fn) {
  if (workers_.empty() || n <= 1) {
    for (int i = 0; i < n; ++i) fn(i);
    return;
  }
  // The previous job is over (busy_ was 0 when it returned), so no worker reads these now.
  fn_ = &fn;
  n_ = n;
  next_.store(0, std::memory_order_relaxed);
  busy_.store(static_cast<int>(workers_.size()), std::memory_order_relaxed);
  {
    // Under the mutex, so that a worker between its check and its wait cannot miss the bump.
    std::lock_guard<std::mutex> lock(mu_);
    job_id_.fetch_add(1, std::memory_order_release);
  }
  start_cv_.notify_all();
  work();
  const auto done = [this] { return busy_.load(std::memory_order_acquire) == 0; };
  if (!spin_until(done)) {
    std::unique_lock<std::mutex> lock(mu_);
    done_cv_.wait(lock, done);
  }
  fn_ = nullptr;
}

void ThreadPool::worker_loop() {
  unsigned seen = 0;
  for (;;) {
    const auto ready = [&] {
      return stop_.load(std::memory_order_relaxed) ||
             job_id_.load(std::memory_order_acquire) != seen;
    };
    if (!spin_until(ready)) {
      std::unique_lock<std::mutex> lock(mu_);
      start_cv_.wait(lock, ready);
    }
    if (stop_.load()) return;
    seen = job_id_.load(std::memory_order_acquire);
    work();
    if (busy_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
      std::lock_guard<std::mutex> lock(mu_);  // the caller may be between its check and wait
      done_cv_.notify_one();
    }
  }
}

}  // namespace dsi
