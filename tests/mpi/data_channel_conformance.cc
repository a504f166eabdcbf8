// MPI test: the MPI host-buffer DataChannel between rank 0 (sender) and rank 1 (receiver)
// passes the conformance checks (sizes up to 16 MiB, out-of-order receipt, 2000 transfers in
// flight, discard, deadline, cancellation while pending). Then every rank checks that MPI
// failures on the channels' communicators come back as TransportErrors naming the call and
// the peer (transport/mpi_check.h) instead of aborting the job.
#include <fmt/format.h>
#include <mpi.h>

#include <functional>
#include <string>

#include "../data_channel_conformance.h"
#include "common/error.h"
#include "transport/mpi_channel.h"
#include "transport/mpi_check.h"

namespace {

// Runs f, which must throw a TransportError whose text contains every fragment; returns the
// number of failures (printed as FAIL lines).
int expect_transport_error(int rank, const char* what, const std::function<void()>& f,
                           const std::vector<std::string>& fragments) {
  try {
    f();
  } catch (const dsi::TransportError& e) {
    int failed = 0;
    for (const auto& s : fragments) {
      if (std::string(e.what()).find(s) == std::string::npos) {
        fmt::print("FAIL rank {}: {}: '{}' lacks '{}'\n", rank, what, e.what(), s);
        ++failed;
      }
    }
    return failed;
  } catch (const std::exception& e) {
    fmt::print("FAIL rank {}: {}: not a TransportError: {}\n", rank, what, e.what());
    return 1;
  }
  fmt::print("FAIL rank {}: {}: nothing thrown\n", rank, what);
  return 1;
}

int check_mpi_errors(int rank, int size) {
  dsi::set_process_identity(rank, "testhost");
  const int nowhere = size + 3;
  const std::string peer = fmt::format("(peer rank {})", nowhere);
  const std::string me = fmt::format("rank {} on testhost: ", rank);
  int failed = 0;
  // MPI's own words for the code (MPI_Error_string), now that MPI is up.
  char words[MPI_MAX_ERROR_STRING] = {};
  int len = 0;
  MPI_Error_string(MPI_ERR_RANK, words, &len);
  failed += expect_transport_error(rank, "mpi_check",
                                   [] { dsi::mpi_check(MPI_ERR_RANK, "MPI_Isend", 7); },
                                   {me + "MPI_Isend (peer rank 7): " + std::string(words, len)});
  {
    dsi::MpiChannel ch(MPI_COMM_WORLD, dsi::MpiChannel::Polling{});
    failed += expect_transport_error(rank, "MpiChannel::send to a rank outside the world",
                                     [&] {
                                       ch.send(nowhere, {1, 2, 3}, dsi::Traffic::kWork);
                                     },
                                     {me, "MPI_Isend", peer});
  }
  {
    auto data = dsi::make_mpi_data_channel(MPI_COMM_WORLD, 20);
    failed += expect_transport_error(
        rank, "MPI data channel send to a rank outside the world",
        [&] {
          data->send(nowhere, dsi::DataKey{1, dsi::DataKind::kKvCache, 0, 0}, {1, 2});
        },
        {me, "MPI_Isend", peer});
  }
  dsi::clear_process_identity();
  return failed;
}

}  // namespace

int main(int argc, char** argv) {
  int provided;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
  int rank, failed = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  {
    auto ch = dsi::make_mpi_data_channel(MPI_COMM_WORLD, 20);
    if (rank == 0) {
      dsi::conformance::send_all(*ch, 1);
    } else if (rank == 1) {
      for (const auto& f : dsi::conformance::receive_all(*ch)) {
        fmt::print("FAIL {}\n", f);
        ++failed;
      }
      fmt::print("data channel conformance over MPI: {} passed, {} failed\n", failed ? 0 : 1,
                 failed);
    }
    MPI_Barrier(MPI_COMM_WORLD);
  }
  int size = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  const int mpi_failed = check_mpi_errors(rank, size);
  fmt::print("rank {}: MPI failures as TransportErrors: {}\n", rank,
             mpi_failed ? "FAILED" : "passed");
  failed += mpi_failed;
  MPI_Allreduce(MPI_IN_PLACE, &failed, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  MPI_Finalize();
  return failed ? 1 : 0;
}
