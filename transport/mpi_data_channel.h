// The data plane over MPI host buffers: its own duplicate of the communicator, non-blocking
// sends of owned buffers, receives pulled by the consumer (transport/data_channel.h).
#pragma once

#include <mpi.h>

#include <memory>

#include "transport/data_channel.h"

namespace dsi {

// MPI host buffers on a duplicate of `comm`; probes sleep poll_us between tries.
std::unique_ptr<DataChannel> make_mpi_data_channel(MPI_Comm comm, int poll_us);

}  // namespace dsi
