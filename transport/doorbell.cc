#include "transport/doorbell.h"

#include <fcntl.h>
#include <sched.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <new>
#include <numeric>
#include <random>

#include <fmt/format.h>

#include "common/error.h"
#include "common/futex.h"
#include "transport/mpi_check.h"

namespace dsi {
namespace {

// The CPUs this process may run on.
cpu_set_t affinity() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) != 0) {
    for (long c = 0, n = sysconf(_SC_NPROCESSORS_ONLN); c < n && c < CPU_SETSIZE; ++c) {
      CPU_SET(static_cast<int>(c), &set);
    }
  }
  return set;
}

}  // namespace

Doorbells::Doorbells(MPI_Comm comm, int threads) {
  int rank = 0;
  int size = 0;
  mpi_check(MPI_Comm_rank(comm, &rank), "MPI_Comm_rank");
  mpi_check(MPI_Comm_size(comm, &size), "MPI_Comm_size");
  mpi_check(MPI_Comm_split_type(comm, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &node_),
            "MPI_Comm_split_type");
  mpi_errors_return(node_);
  int node_rank = 0;
  mpi_check(MPI_Comm_rank(node_, &node_rank), "MPI_Comm_rank");
  mpi_check(MPI_Comm_size(node_, &node_ranks_), "MPI_Comm_size");
  all_local_ = node_ranks_ == size;

  // Whether every thread of the node's ranks has a CPU: the union of their affinity masks
  // against their threads, and this rank's own mask against its own (ranks bound to one core
  // each by mpirun run all their threads on it).
  {
    struct Share {
      cpu_set_t cpus;
      int threads;
    };
    const Share own{affinity(), std::max(1, threads)};
    std::vector<Share> all(static_cast<size_t>(node_ranks_));
    mpi_check(MPI_Allgather(&own, sizeof(own), MPI_BYTE, all.data(), sizeof(own), MPI_BYTE, node_),
              "MPI_Allgather");
    cpu_set_t any;
    CPU_ZERO(&any);
    node_threads_ = 0;
    for (auto& s : all) {
      CPU_OR(&any, &any, &s.cpus);
      node_threads_ += s.threads;
    }
    node_cpus_ = std::max(1, CPU_COUNT(&any));
    crowded_ = own.threads > CPU_COUNT(&own.cpus);
    oversubscribed_ = node_threads_ > node_cpus_ || crowded_;
  }

  // The bells live in a POSIX shared-memory object that the node's first rank names and
  // creates; every rank maps it, and it is unlinked once all have, so that nothing outlives
  // the job. Unmapping is local: no rank ever waits for another to tear down.
  char name[64] = {};
  if (node_rank == 0) {
    std::random_device rd;
    std::snprintf(name, sizeof(name), "/dsi-bells-%d-%08x", static_cast<int>(getpid()), rd());
  }
  mpi_check(MPI_Bcast(name, sizeof(name), MPI_CHAR, 0, node_), "MPI_Bcast");
  const size_t bytes = sizeof(Bell) * static_cast<size_t>(node_ranks_);
  int fd = -1;
  if (node_rank == 0) {
    fd = shm_open(name, O_CREAT | O_EXCL | O_RDWR, 0600);
    if (fd >= 0 && ftruncate(fd, static_cast<off_t>(bytes)) != 0) {
      close(fd);
      shm_unlink(name);
      fd = -1;
    }
  }
  int created = node_rank != 0 || fd >= 0;
  mpi_check(MPI_Bcast(&created, 1, MPI_INT, 0, node_), "MPI_Bcast");
  void* base = MAP_FAILED;
  if (created) {
    if (node_rank != 0) fd = shm_open(name, O_RDWR, 0600);
    if (fd >= 0) {
      base = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
      close(fd);
    }
  }
  const int err = errno;
  // The first rank constructs the bells before it joins the agreement below, which no rank
  // leaves before it: none can use a bell that is not yet constructed, and none constructs one
  // (resetting its counts) that another already waits on.
  if (node_rank == 0 && base != MAP_FAILED) {
    for (int i = 0; i < node_ranks_; ++i) new (static_cast<Bell*>(base) + i) Bell;
  }
  const int mapped = base != MAP_FAILED;
  int ok = mapped;
  mpi_check(MPI_Allreduce(MPI_IN_PLACE, &ok, 1, MPI_INT, MPI_LAND, node_), "MPI_Allreduce");
  if (node_rank == 0 && created) shm_unlink(name);
  if (!ok) {
    if (base != MAP_FAILED) munmap(base, bytes);
    mpi_warn(MPI_Comm_free(&node_), "MPI_Comm_free");
    throw TransportError(
        fmt::format("shared memory for the control doorbells ({}): {}", name,
                    mapped ? "failed on another rank of this node" : std::strerror(err)));
  }
  base_ = base;
  bytes_ = bytes;
  auto* node_bells = static_cast<Bell*>(base);

  MPI_Group group;
  MPI_Group node_group;
  mpi_check(MPI_Comm_group(comm, &group), "MPI_Comm_group");
  mpi_check(MPI_Comm_group(node_, &node_group), "MPI_Comm_group");
  std::vector<int> ranks(static_cast<size_t>(size));
  std::vector<int> on_node(static_cast<size_t>(size));
  std::iota(ranks.begin(), ranks.end(), 0);
  mpi_check(MPI_Group_translate_ranks(group, size, ranks.data(), node_group, on_node.data()),
            "MPI_Group_translate_ranks");
  MPI_Group_free(&group);
  MPI_Group_free(&node_group);
  bells_.assign(static_cast<size_t>(size), nullptr);
  for (int r = 0; r < size; ++r) {
    if (on_node[r] != MPI_UNDEFINED) bells_[r] = &node_bells[on_node[r]];
  }
  mine_ = bells_[static_cast<size_t>(rank)];
}

Doorbells::~Doorbells() {
  // Local only: no rank waits for another to tear down.
  munmap(base_, bytes_);
  mpi_warn(MPI_Comm_free(&node_), "MPI_Comm_free");
}

void Doorbells::ring(int rank) {
  if (rank < 0 || static_cast<size_t>(rank) >= bells_.size()) return;  // MPI reports that one
  Bell* b = bells_[static_cast<size_t>(rank)];
  if (!b) return;
  b->count.fetch_add(1, std::memory_order_seq_cst);
  if (b->sleepers.load(std::memory_order_seq_cst) != 0) {
    futex_wake_all(b->count, FutexScope::kShared);
  }
}

bool Doorbells::wait(uint32_t seen, Clock::time_point deadline) {
  mine_->sleepers.fetch_add(1, std::memory_order_seq_cst);
  if (mine_->count.load(std::memory_order_seq_cst) == seen && Clock::now() < deadline) {
    futex_wait(mine_->count, seen, deadline, FutexScope::kShared);
  }
  mine_->sleepers.fetch_sub(1, std::memory_order_seq_cst);
  return mine_->count.load(std::memory_order_seq_cst) != seen;
}

}  // namespace dsi
