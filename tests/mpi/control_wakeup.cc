// MPI test: a rank that waits for control messages sleeps on its doorbell and wakes the moment
// a peer on its node sends one (transport/doorbell.h, transport/mpi_channel.h).
// - Polling is made too slow to matter (a re-probe every 2 s): a message that only polling
//   found would take seconds, so each prompt wake-up is the doorbell's doing.
// - A deferred frame does not wake it; it is read, in order, with the next frame that does.
// - The waiting thread uses almost no CPU while it sleeps, and a receive with no message
//   returns at its deadline.
// - The adaptive policy spins only where every declared thread has a CPU of its own: never
//   with more threads than this node has CPUs.
// Ranks: 3 (rank 2 waits through the whole test, as a rank a run does not use).
#include <fmt/format.h>
#include <mpi.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <string>
#include <thread>
#include <vector>

#include "transport/doorbell.h"
#include "transport/mpi_channel.h"

namespace {

int failed = 0;

void expect(bool ok, int rank, const std::string& what) {
  if (!ok) {
    fmt::print("FAIL rank {}: {}\n", rank, what);
    ++failed;
  }
}

double thread_cpu_s() {
  rusage ru{};
  getrusage(RUSAGE_THREAD, &ru);
  return static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
         static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1e-6;
}

double since_ms(dsi::Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(dsi::Clock::now() - t0).count();
}

}  // namespace

int main(int argc, char** argv) {
  int provided = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
  int rank = 0, size = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  if (size != 3) {
    if (rank == 0) fmt::print("FAIL: run with 3 ranks, not {}\n", size);
    MPI_Finalize();
    return 1;
  }
  {
    const dsi::MpiChannel::Polling slow{.wait = dsi::MpiChannel::Wait::kSleep,
                                        .min_us = 2000000,
                                        .max_us = 2000000,
                                        .hot_ms = 0,
                                        .cold_ms = 100000};
    dsi::MpiChannel ch(MPI_COMM_WORLD, slow);
    const std::string how = ch.describe();
    expect(how.find("doorbells for 3 of 3 ranks") != std::string::npos, rank,
           "describe() should report doorbells for every rank: " + how);
    const auto wait = std::chrono::seconds(20);

    // 1. Rank 1 sleeps in recv; rank 0 sends after 200 ms, 5 times, and rank 1 answers; the
    //    round trip must take milliseconds, not the 2 s of a re-probe.
    for (int i = 0; i < 5; ++i) {
      if (rank == 0) {
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
        const auto t0 = dsi::Clock::now();
        ch.send(1, {1, 2, 3}, dsi::Traffic::kWork);
        const auto f = ch.recv(dsi::Clock::now() + wait);
        const double ms = since_ms(t0);
        expect(f && f->src == 1 && f->bytes == std::vector<uint8_t>{4, 5}, rank, "rank 1's answer");
        expect(ms < 200, rank, fmt::format("round trip {:.1f} ms: the doorbell did not wake", ms));
        if (i == 4) fmt::print("rank 0: round trip after 200 ms idle {:.3f} ms\n", ms);
      } else if (rank == 1) {
        const double cpu0 = thread_cpu_s();
        const auto t0 = dsi::Clock::now();
        const auto f = ch.recv(dsi::Clock::now() + wait);
        const double ms = since_ms(t0), cpu = (thread_cpu_s() - cpu0) * 1e3;
        expect(f && f->src == 0 && f->bytes == std::vector<uint8_t>{1, 2, 3}, rank,
               "rank 0's ping");
        // About 200 ms asleep: a spinning wait would have used about as much CPU.
        expect(cpu < 0.25 * ms, rank,
               fmt::format("waited {:.1f} ms using {:.1f} ms of CPU: it spins", ms, cpu));
        ch.send(0, {4, 5}, dsi::Traffic::kWork);
      }
    }

    // 2. No message: recv returns empty at its deadline (not before, not much after).
    if (rank == 1) {
      const auto t0 = dsi::Clock::now();
      const auto f = ch.recv(t0 + std::chrono::milliseconds(150));
      const double ms = since_ms(t0);
      expect(!f, rank, "a frame arrived that nobody sent");
      expect(ms >= 150 && ms < 1000, rank, fmt::format("deadline of 150 ms kept as {:.1f} ms", ms));
    }

    // 3. A deferred frame does not wake the receiver: rank 1 reads it, in order, only when
    //    the next frame rings 300 ms later.
    MPI_Barrier(MPI_COMM_WORLD);
    if (rank == 0) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      ch.send(1, {7}, dsi::Traffic::kDeferred);
      std::this_thread::sleep_for(std::chrono::milliseconds(300));
      ch.send(1, {8}, dsi::Traffic::kWork);
    } else if (rank == 1) {
      const auto t0 = dsi::Clock::now();
      const auto f = ch.recv(t0 + wait);
      const double ms = since_ms(t0);
      expect(f && f->bytes == std::vector<uint8_t>{7}, rank, "the deferred frame first");
      expect(ms >= 300, rank, fmt::format("the deferred frame woke the receiver ({:.1f} ms)", ms));
      const auto g = ch.recv(dsi::Clock::now() + wait);
      expect(g && g->bytes == std::vector<uint8_t>{8}, rank, "the frame that rang, second");
      expect(since_ms(t0) < ms + 100, rank, "the frame that rang came at once");
    }

    // 4. The end: rank 2 has been waiting all along and wakes for its message at once.
    MPI_Barrier(MPI_COMM_WORLD);
    if (rank == 0) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      ch.send(2, {9}, dsi::Traffic::kLiveness);
    }
    if (rank == 2) {
      const auto f = ch.recv(dsi::Clock::now() + wait);
      expect(f && f->bytes == std::vector<uint8_t>{9}, rank, "rank 0's last message");
    }
    ch.flush(dsi::Clock::now() + std::chrono::seconds(2));
    MPI_Barrier(MPI_COMM_WORLD);
  }

  // 5. Oversubscription: one thread per rank on a node with at least as many CPUs is not;
  //    more threads than CPUs is.
  {
    const long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    dsi::Doorbells many(MPI_COMM_WORLD, static_cast<int>(cpus) + 1);
    expect(many.oversubscribed() && many.crowded(), rank,
           fmt::format("{} threads per rank on {} CPUs should be oversubscribed", cpus + 1, cpus));
    expect(many.node_ranks() == 3 && many.node_threads() == 3 * (static_cast<int>(cpus) + 1), rank,
           "node ranks and threads");
    dsi::MpiChannel spin(MPI_COMM_WORLD, {.wait = dsi::MpiChannel::Wait::kAdaptive,
                                          .threads = static_cast<int>(cpus) + 1});
    expect(spin.describe().find("adaptive, sleeps") != std::string::npos, rank,
           "adaptive with more threads than CPUs must sleep: " + spin.describe());
  }

  int total = 0;
  MPI_Allreduce(&failed, &total, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  if (rank == 0) {
    if (total == 0) {
      fmt::print("ok: doorbells wake waiting ranks\n");
    } else {
      fmt::print("FAIL: {} checks\n", total);
    }
  }
  MPI_Finalize();
  return total == 0 ? 0 : 1;
}
