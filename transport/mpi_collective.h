// Collectives of a CPU rank group over MPI (transport/collective.h): an all-gather of every
// rank's partial sums, added in rank order on each rank, so that all get the same bits (MPI's
// own all-reduce does not promise that).
#pragma once

#include <mpi.h>

#include <memory>

#include "transport/collective.h"

namespace dsi {

// The group is `comm` (its ranks in comm's order; the caller keeps it alive). A peer that has
// not joined an all-reduce within timeout_s raises CollectiveTimeout; the collective is then
// left pending, so the caller must end the process (as a run does on any dead peer).
std::unique_ptr<Collective> make_mpi_collective(MPI_Comm comm, double timeout_s);

}  // namespace dsi
