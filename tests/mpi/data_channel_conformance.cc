// MPI test: the MPI host-buffer DataChannel between rank 0 (sender) and rank 1 (receiver)
// passes the conformance checks (sizes up to 16 MiB, out-of-order receipt, 2000 transfers in
// flight, discard, deadline, cancellation while pending).
#include <fmt/format.h>
#include <mpi.h>

#include "../data_channel_conformance.h"

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
      fmt::print("data channel conformance over MPI: {} passed, {} failed\n", failed ? 0 : 1, failed);
    }
    MPI_Barrier(MPI_COMM_WORLD);
  }
  MPI_Allreduce(MPI_IN_PLACE, &failed, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  MPI_Finalize();
  return failed ? 1 : 0;
}
