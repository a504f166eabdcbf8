// The one error hierarchy of dsi. Every failure dsi reports (bad input, a failed device or MPI
// call, a peer that failed) is a dsi::Error, most often one of the subclasses below, each named
// for the area that raises it; catch (const Error&) catches them all.
//
//   Error                   any of them; what() begins with the raising process's identity
//   |- UsageError           a command-line value (launch/)
//   |- ConfigError          a config file or key (core/config.h)
//   |- ModelError           a model file: GGUF, safetensors, config.json, tokenizer (model/)
//   |- GpuBindingError      which GPU a rank computes on (common/gpu_binding.h)
//   |- GpuError             a CUDA, cuBLAS or NCCL status (kernels/cuda_check.h); names the GPU
//   |  |- CudaError
//   |  |- CublasError
//   |  `- NcclError
//   |- TransportError       an MPI call failed (transport/mpi_check.h)
//   |  |- DataPlaneError    the data plane that was asked for cannot be had
//   |  `- NcclChannelError  the NCCL data channel cannot be built or has failed
//   |- ProtocolError        a control frame that does not decode (core/protocol.h)
//   |- PeerError            another rank reported a failure or fell silent (core/coordinator.h)
//   `- WorkerFatal          a worker cannot go on (core/worker.h)
//
// Not in it, on purpose:
// - Cancelled (common/cancel.h) is control flow, not a failure: an engine throws it to unwind
//   a preempted forward and the worker answers it with a Cancelled reply. Keeping it out of the
//   hierarchy means that no handler for failures (catch (const Error&)) swallows a preemption.
// - std::invalid_argument and std::out_of_range: a caller broke a function's documented
//   contract (n_logits out of range, a KV blob that does not fit), a programming error that
//   the standard library's own checks report the same way.
//
// Identity: once a session knows who this process is (launch/session.cc sets it right after
// MPI starts, before any other thread), every Error's what() reads "rank 3 on node7: ...", so
// that a message printed by one rank, or relayed by the coordinator, says where it was raised.
// Plain processes (dsi profile, simulate, make-model, the unit tests) have no identity and no
// prefix.
#pragma once

#include <stdexcept>
#include <string>
#include <string_view>

namespace dsi {

// Sets this process's identity for error messages: rank in MPI_COMM_WORLD and host name.
void set_process_identity(int rank, const std::string& host);
// Forgets it (tests).
void clear_process_identity();
// "rank 3 on node7", or "" when none was set.
std::string process_identity();

class Error : public std::runtime_error {
 public:
  // what() = "<identity>: <message>", or the message alone when no identity is set.
  explicit Error(const std::string& message);

  // The text without the identity prefix.
  std::string_view message() const noexcept { return std::string_view(what()).substr(prefix_); }

 protected:
  // For errors whose message already names where the failure happened (PeerError: the
  // coordinator reports another rank's failure and names that rank).
  struct Unprefixed {};
  Error(Unprefixed, const std::string& message);

 private:
  Error(std::string prefix, const std::string& message);
  size_t prefix_ = 0;
};

// The text of any exception without this process's identity: Error::message() for a
// dsi::Error, what() otherwise. For wrapping one error's text into another's (which adds the
// identity again) and for texts that every rank raises alike.
std::string_view error_message(const std::exception& e) noexcept;

struct UsageError : Error {
  using Error::Error;
};

struct ConfigError : Error {
  using Error::Error;
};

// Problems with model files: the message names the file and the key or tensor at fault. Not
// used for programming errors inside an engine.
struct ModelError : Error {
  using Error::Error;
};

struct GpuBindingError : Error {
  using Error::Error;
};

// code() is the library's numeric status (cudaError_t, cublasStatus_t, ncclResult_t).
class GpuError : public Error {
 public:
  GpuError(const std::string& message, int code) : Error(message), code_(code) {}
  int code() const { return code_; }

 private:
  int code_;
};
struct CudaError : GpuError {
  using GpuError::GpuError;
};
struct CublasError : GpuError {
  using GpuError::GpuError;
};
struct NcclError : GpuError {
  using GpuError::GpuError;
};

struct TransportError : Error {
  using Error::Error;
};
// Thrown identically on every rank, so that all of them can end with the same verdict.
struct DataPlaneError : TransportError {
  using TransportError::TransportError;
};
struct NcclChannelError : TransportError {
  using TransportError::TransportError;
};

struct ProtocolError : Error {
  using Error::Error;
};

// Raised by the coordinator about worker `rank` (-1: unknown); the message begins with that
// rank's name, so it carries no prefix of its own (the worker's text inside it has the
// worker's host).
struct PeerError : Error {
  PeerError(int r, const std::string& message, bool is_dead)
      : Error(Unprefixed{}, message), rank(r), dead(is_dead) {}
  int rank;
  bool dead;  // silent (dead or wedged) rather than reporting an error
};

struct WorkerFatal : Error {
  using Error::Error;
};

}  // namespace dsi
