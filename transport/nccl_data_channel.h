// The NCCL data channel: one DataChannel that moves host memory over MPI (a delegated MPI
// host-buffer channel) and device memory over NCCL (moves_device_memory() on GPU ranks).
// Plain C++: no CUDA type appears here; the implementation builds only with CUDA.
//
// Device transfers. The sender sends a small header (key, size) over MPI, then ncclSend of
// the payload; the receiver's progress thread, on each header, takes a staging buffer from
// the channel's memory pool and posts ncclRecv into it, recording an event. recv_device waits
// on the host until the key's header has been seen, then orders a copy staging -> dst on the
// caller's stream after that event: the host never waits for the payload. Items stay until
// discard, which frees their staging buffers once every copy out of them has run.
//
// Ordering and deadlock. A send waits on the device for its matching receive, and NCCL runs
// the operations of one communicator one after another, so one communicator shared by every
// pair can deadlock as soon as two ranks send to each other (each send waits for a receive
// queued behind the other's send), or three ranks form a cycle. So every ordered pair of GPU
// ranks (s -> r) has its own two-rank communicator and its own stream on each side (a
// "pipe"): on it s only sends and r only receives, s issues its sends in the order of its
// headers, and r posts its receives in the order the headers arrive, which is the same order
// (MPI does not overtake between one pair on one communicator and tag). The k-th send of a
// pipe thus matches its k-th receive, and a pipe's operations wait only for each other (and
// for the sender's own stream up to the send_device call), never for another pipe: no cycle.
// A rank is in 2(W-1) communicators for W GPU ranks; fine for one node of 8 GPUs. All NCCL
// calls of a rank are made under one mutex (NCCL wants one thread at a time). Channel
// streams are non-blocking streams, so the legacy default stream never waits for a pipe.
//
// Shutdown never waits forever: communicators are created non-blocking with a deadline; the
// destructor keeps posting receives for arriving headers until its pipes are idle or 2 s
// have passed, then finalises the communicators (or aborts them when not idle, or late).
#pragma once

#include <mpi.h>

#include <memory>

#include "common/error.h"
#include "transport/data_channel.h"

namespace dsi {

struct NcclChannelOptions {
  bool participate = true;  // false: no GPU here (the coordinator): host transfers only
  int device = -1;          // this rank's CUDA device; -1: bound_cuda_device(-1)
  int poll_us = 20;         // MPI probe interval (the progress thread backs off to 1 ms idle)
  double init_timeout_s = 120;
};

// Collective over `comm`; ranks in DataChannel calls are ranks of `comm`. Every rank of
// `comm` must call it; the participating ranks must each have their own GPU. Throws
// NcclChannelError, on every rank, when a communicator cannot be built (the message names
// the first rank that failed and why), or in a build without CUDA.
std::unique_ptr<DataChannel> make_nccl_data_channel(MPI_Comm comm, const NcclChannelOptions& o);

}  // namespace dsi
