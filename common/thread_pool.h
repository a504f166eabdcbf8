// A small fixed pool of worker threads for the llama engine's own loops (attention heads).
// Workers block on a condition variable between jobs, so an idle engine never spins a core
// (ranks share cores on the test machines). Not a general task system: one job at a time.
#pragma once

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

 private:
  void worker_loop();
  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable start_cv_, done_cv_;
  const std::function<void(int)>* fn_ = nullptr;
  int n_ = 0;
  int next_ = 0;         // next index to hand out
  int busy_ = 0;         // workers still inside the current job
  unsigned job_id_ = 0;  // bumps for every job so a worker runs each one once
  bool stop_ = false;
};

}  // namespace dsi
