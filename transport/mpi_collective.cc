#include "transport/mpi_collective.h"

#include <chrono>
#include <string>
#include <thread>
#include <vector>

namespace dsi {
namespace {

class MpiCollective final : public Collective {
 public:
  MpiCollective(MPI_Comm comm, double timeout_s) : comm_(comm), timeout_s_(timeout_s) {
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }

  bool all_reduce(std::span<float> data, bool stop, std::chrono::milliseconds longer) override {
    const double wait_s = timeout_s_ + std::chrono::duration<double>(longer).count();
    // The stop flag rides as one more element.
    const int n = static_cast<int>(data.size()), m = n + 1;
    mine_.assign(data.begin(), data.end());
    mine_.push_back(stop ? 1.0f : 0.0f);
    gathered_.resize(static_cast<size_t>(m) * size_);
    MPI_Request req;
    MPI_Iallgather(mine_.data(), m, MPI_FLOAT, gathered_.data(), m, MPI_FLOAT, comm_, &req);
    const auto deadline = std::chrono::steady_clock::now() +
                          std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                              std::chrono::duration<double>(wait_s));
    for (int done = 0;;) {
      MPI_Test(&req, &done, MPI_STATUS_IGNORE);
      if (done) break;
      if (std::chrono::steady_clock::now() > deadline) {
        throw CollectiveTimeout("all-reduce: rank " + std::to_string(rank_) + " of " +
                                std::to_string(size_) + " waited " + std::to_string(wait_s) +
                                " s for its peers");
      }
      std::this_thread::yield();
    }
    for (int i = 0; i < n; ++i) {
      float s = 0;
      for (int r = 0; r < size_; ++r) s += gathered_[static_cast<size_t>(r) * m + i];
      data[i] = s;
    }
    bool any_stop = false;
    for (int r = 0; r < size_; ++r) any_stop |= gathered_[static_cast<size_t>(r) * m + n] > 0;
    return any_stop;
  }

 private:
  MPI_Comm comm_;
  double timeout_s_;
  int rank_ = 0, size_ = 1;
  std::vector<float> mine_, gathered_;
};

}  // namespace

std::unique_ptr<Collective> make_mpi_collective(MPI_Comm comm, double timeout_s) {
  return std::make_unique<MpiCollective>(comm, timeout_s);
}

}  // namespace dsi
