// MPI return codes, checked: every MPI call in dsi goes through mpi_check (or mpi_warn where
// nothing may throw), and every communicator dsi creates returns its errors (MPI_ERRORS_RETURN)
// instead of aborting the job from inside the MPI library, so that the failure is reported as
// a TransportError (common/error.h) naming the call, the peer, this rank and its host. Used by
// the MPI implementations in transport/ and by the session that starts MPI (launch/); nothing
// above transport/ sees an MPI type otherwise.
#pragma once

#include <mpi.h>

namespace dsi {

// Throws TransportError "MPI_Isend (peer rank 3): <MPI_Error_string(rc)>" (peer < 0: none named)
// when rc is not MPI_SUCCESS.
void mpi_check(int rc, const char* call, int peer = -1);

// The same text as mpi_check's error, printed to stderr instead of thrown: for destructors and
// clean-up that must go on.
void mpi_warn(int rc, const char* call, int peer = -1) noexcept;

// Makes failures on `comm` come back as return codes (MPI_ERRORS_RETURN) for mpi_check.
void mpi_errors_return(MPI_Comm comm);

}  // namespace dsi
