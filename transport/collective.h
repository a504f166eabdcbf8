// Collectives within a group of ranks that shard one model (tensor parallelism): the sharded
// llama block (engines/llama) sums its row-parallel products over the group after attention
// and after the MLP. Every rank of the group gets the same bits: the partial sums are added in
// rank order (rank 0's + rank 1's + ...), whatever the transport, so the ranks of a group never
// disagree on a token. Implementations: MPI on CPU groups (transport/mpi_collective.h) and a
// loopback twin for tests (threads of one process). NCCL on GPU groups is not built yet.
#pragma once

#include <chrono>
#include <memory>
#include <span>
#include <stdexcept>

namespace dsi {

// A peer of the group did not take part in time (it died, hangs, or left the collective).
struct CollectiveTimeout : std::runtime_error {
  using std::runtime_error::runtime_error;
};

class Collective {
 public:
  virtual ~Collective() = default;
  virtual int rank() const = 0;  // within the group, 0 .. size() - 1
  virtual int size() const = 0;
  // Replaces `data` on every rank by the sum over the group's ranks, added in rank order, and
  // returns whether any rank passed stop = true: the agreement by which a group stops as one
  // (a cancel that reached one rank stops every rank at the same collective). Every rank
  // passes the same length. Throws CollectiveTimeout when a peer has not joined within the
  // group's timeout, plus `longer` (a wait that may legitimately take more, such as every
  // shard building its engine).
  virtual bool all_reduce(std::span<float> data, bool stop,
                          std::chrono::milliseconds longer = std::chrono::milliseconds(0)) = 0;
  void all_reduce_sum(std::span<float> data) { (void)all_reduce(data, false); }
};

// A group of `size` ranks as threads of one process: member(r) is rank r's end. The hub must
// outlive its members.
class LoopbackCollectiveHub {
 public:
  explicit LoopbackCollectiveHub(int size,
                                 std::chrono::milliseconds timeout = std::chrono::seconds(10));
  ~LoopbackCollectiveHub();
  std::unique_ptr<Collective> member(int rank);

  struct State;  // transport/collective.cc

 private:
  std::unique_ptr<State> state_;
};

}  // namespace dsi
