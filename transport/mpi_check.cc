#include "transport/mpi_check.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstdio>
#include <string>

#include "common/error.h"

namespace dsi {
namespace {

// MPI's words for rc; only its number outside MPI_Init .. MPI_Finalize, where MPI may not be
// asked (Open MPI aborts the process).
std::string mpi_text(int rc, const char* call, int peer) {
  char msg[MPI_MAX_ERROR_STRING] = {};
  int len = 0, up = 0, down = 0;
  MPI_Initialized(&up);
  MPI_Finalized(&down);
  if (!up || down || MPI_Error_string(rc, msg, &len) != MPI_SUCCESS) {
    len = std::snprintf(msg, sizeof msg, "MPI error code %d", rc);
  }
  const std::string what(msg, static_cast<size_t>(std::max(0, len)));
  return peer >= 0 ? fmt::format("{} (peer rank {}): {}", call, peer, what)
                   : fmt::format("{}: {}", call, what);
}

}  // namespace

void mpi_check(int rc, const char* call, int peer) {
  if (rc != MPI_SUCCESS) throw TransportError(mpi_text(rc, call, peer));
}

void mpi_warn(int rc, const char* call, int peer) noexcept {
  if (rc == MPI_SUCCESS) return;
  try {
    const std::string who = process_identity();
    fmt::print(stderr, "dsi: warning: {}{}{}\n", who, who.empty() ? "" : ": ",
               mpi_text(rc, call, peer));
  } catch (...) {
    std::fputs("dsi: warning: an MPI call failed during clean-up\n", stderr);
  }
}

void mpi_errors_return(MPI_Comm comm) {
  mpi_check(MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler");
}

}  // namespace dsi
