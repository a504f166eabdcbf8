// A small fixed pool of worker threads for the llama engine's loops (the rows of a matrix
// product, attention heads). One job at a time; indices are handed out by an atomic counter.
// Between jobs a worker spins briefly (a decode step runs a few hundred jobs microseconds
// apart, and a futex wake-up costs tens of microseconds each), then blocks on a condition
// variable, so an idle engine never holds a core (ranks share cores on the test machines).
#pragma once

#include <atomic>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace dsi {

class ThreadPool {
 public:
  // threads: total threads working on a job, the calling thread included (>= 1).
  explicit ThreadPool(int threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return static_cast<int>(workers_.size()) + 1; }

  // Calls fn(i) for every i in [0, n) spread over the pool and returns when all are done.
  // fn must not throw.
  void parallel_for(int n, const std::function<void(int)>& fn);

  // How long a thread spins for the next job (a worker) or for the others to finish (the
  // caller) before it blocks.
  static constexpr int kSpinMicros = 100;

 private:
  void worker_loop();
  void work();
  std::vector<std::thread> workers_;
  std::mutex mu_;  // guards the sleeps on the two condition variables
  std::condition_variable start_cv_, done_cv_;
  const std::function<void(int)>* fn_ = nullptr;
  int n_ = 0;
  std::atomic<int> next_{0};         // next index to hand out
  std::atomic<int> busy_{0};         // workers still inside the current job
  std::atomic<unsigned> job_id_{0};  // bumps for every job so a worker runs each one once
  std::atomic<bool> stop_{false};
};

}  // namespace dsi
