// Benchmark (not a test): one-way latency of a small control message over MpiChannel between
// rank 0 and rank 1, with the receiver waiting in the channel's back-off as the runtime does.
// Run: mpirun -np 2 build/tests/bench/control_latency [min_us max_us hot_ms pause_ms]
#include <fmt/format.h>
#include <mpi.h>

#include <algorithm>
#include <cstdlib>
#include <thread>
#include <vector>

#include "core/protocol.h"
#include "transport/mpi_channel.h"

int main(int argc, char** argv) {
  int provided;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
  // Arguments: poll_min_us poll_max_us hot_ms pause_ms (the pause between pings).
  dsi::MpiChannel::Polling poll;
  if (argc > 1) poll.min_us = std::atoi(argv[1]);
  if (argc > 2) poll.max_us = std::atoi(argv[2]);
  if (argc > 3) poll.hot_ms = std::atoi(argv[3]);
  const int pause_ms = argc > 4 ? std::atoi(argv[4]) : 2;
  {
    dsi::MpiChannel mpi(MPI_COMM_WORLD, poll);
    dsi::ControlLink ch(mpi);
    const int n = 200;
    std::vector<double> rtt;
    for (int i = 0; i < n; ++i) {
      if (ch.rank() == 0) {
        // Let the peer settle into its longest back-off before each ping, as an idle rank is.
        std::this_thread::sleep_for(std::chrono::milliseconds(pause_ms));
        const auto t0 = dsi::Clock::now();
        ch.send(1, dsi::Message{.body = dsi::msg::Heartbeat{}});
        ch.recv(dsi::Clock::now() + std::chrono::seconds(5));
        rtt.push_back(std::chrono::duration<double, std::micro>(dsi::Clock::now() - t0).count());
      } else if (ch.rank() == 1) {
        ch.recv(dsi::Clock::now() + std::chrono::seconds(5));
        ch.send(0, dsi::Message{.body = dsi::msg::Heartbeat{}});
      }
    }
    if (ch.rank() == 0) {
      std::sort(rtt.begin(), rtt.end());
      fmt::print("poll {}-{} us, hot {} ms, pause {} ms: round trip median {:.1f} us, p90 {:.1f} "
                 "us, max {:.1f} us\n",
                 poll.min_us, poll.max_us, poll.hot_ms, pause_ms, rtt[n / 2], rtt[n * 9 / 10],
                 rtt.back());
    }
    mpi.flush(dsi::Clock::now() + std::chrono::seconds(1));
  }
  MPI_Finalize();
}
