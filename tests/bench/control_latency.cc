// Benchmark (not a test): the control plane's latency budget. Rank 0 pings rank 1 with a small
// work message over MpiChannel and times the round trip, both ranks waiting in the channel as
// the runtime does; ranks 2.. wait in their channels for the whole run like ranks a run does
// not use (so that -np 6 on 2 cores shows the oversubscribed case). Each row pauses a fixed
// time before every ping: 0 (hot: back to back), 1 ms, 10 ms (a target forward) and 1 s (an
// idle rank).
//
//   mpirun -np 2 build/tests/bench/control_latency [--wait adaptive|sleep|spin] [--spin-us N]
//   [--threads N]
//          [--pings N] [--no-doorbells]
#include <fmt/format.h>
#include <mpi.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "core/protocol.h"
#include "transport/mpi_channel.h"

namespace {

struct Row {
  int pause_us;
  int pings;
};

double percentile(std::vector<double>& v, double p) {
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * static_cast<double>(v.size())))];
}

}  // namespace

int main(int argc, char** argv) {
  int provided;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
  dsi::MpiChannel::Polling poll;
  int pings = 400;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const char* v = i + 1 < argc ? argv[i + 1] : "";
    if (a == "--wait") {
      const std::string w = v;
      poll.wait = w == "spin"    ? dsi::MpiChannel::Wait::kSpin
                  : w == "sleep" ? dsi::MpiChannel::Wait::kSleep
                                 : dsi::MpiChannel::Wait::kAdaptive;
      ++i;
    } else if (a == "--spin-us") {
      poll.spin_us = std::atoi(v);
      ++i;
    } else if (a == "--threads") {
      poll.threads = std::atoi(v);
      ++i;
    } else if (a == "--no-doorbells") {
      poll.doorbells = false;
    } else if (a == "--pings") {
      pings = std::max(10, std::atoi(v));
      ++i;
    } else {
      fmt::print(stderr, "control_latency: unknown argument {}\n", a);
      MPI_Abort(MPI_COMM_WORLD, 2);
    }
  }
  const std::vector<Row> rows = {{0, pings}, {1000, pings / 2}, {10000, pings / 8}, {1000000, 6}};
  {
    dsi::MpiChannel mpi(MPI_COMM_WORLD, poll);
    dsi::ControlLink ch(mpi);
    const auto wait = std::chrono::seconds(10);
    if (ch.rank() == 0) {
      fmt::print("control round trip, {} ranks: {}\n", ch.size(), mpi.describe());
      fmt::print("{:>10} {:>6} {:>10} {:>10} {:>10}\n", "idle", "pings", "median_us", "p99_us",
                 "max_us");
      for (const Row& row : rows) {
        std::vector<double> rtt;
        for (int i = 0; i < row.pings; ++i) {
          std::this_thread::sleep_for(std::chrono::microseconds(row.pause_us));
          const auto t0 = dsi::Clock::now();
          ch.send(1, dsi::Message{.body = dsi::msg::Cancel{.task = 1}});
          if (!ch.recv(dsi::Clock::now() + wait)) {
            fmt::print(stderr, "control_latency: no reply within 10 s\n");
            MPI_Abort(MPI_COMM_WORLD, 1);
          }
          rtt.push_back(std::chrono::duration<double, std::micro>(dsi::Clock::now() - t0).count());
        }
        const std::string idle = row.pause_us == 0 ? "hot"
                                 : row.pause_us < 1000000
                                     ? fmt::format("{} ms", row.pause_us / 1000)
                                     : "1 s";
        fmt::print("{:>10} {:>6} {:>10.1f} {:>10.1f} {:>10.1f}\n", idle, row.pings,
                   percentile(rtt, 0.5), percentile(rtt, 0.99), percentile(rtt, 1.0));
      }
      for (int r = 1; r < ch.size(); ++r) ch.send(r, dsi::Message{.body = dsi::msg::Stop{}});
    } else {
      // Rank 1 answers every ping; the others only wait, as unused ranks do.
      for (;;) {
        auto env = ch.recv(dsi::Clock::now() + std::chrono::seconds(60));
        if (!env || env->msg.is<dsi::msg::Stop>()) break;
        ch.send(0, dsi::Message{.body = dsi::msg::Cancel{.task = 1}});
      }
    }
    mpi.flush(dsi::Clock::now() + std::chrono::seconds(1));
  }
  MPI_Finalize();
}
