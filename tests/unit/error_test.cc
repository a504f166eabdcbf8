// The error hierarchy (common/error.h): one base, the process identity in every message once
// a session set it, none before; Cancelled outside it; MPI return codes turned into
// TransportErrors naming the call and the peer (transport/mpi_check.h).
#include "common/error.h"

#include <gtest/gtest.h>
#include <mpi.h>

#include <string>

#include "common/cancel.h"
#include "common/gpu_binding.h"
#include "core/config.h"
#include "core/coordinator.h"
#include "core/protocol.h"
#include "core/worker.h"
#include "transport/data_plane.h"
#include "transport/mpi_check.h"
#include "transport/nccl_data_channel.h"

namespace dsi {
namespace {

// Every test leaves the process without an identity, as the other unit tests expect.
class ErrorTest : public ::testing::Test {
 protected:
  void TearDown() override { clear_process_identity(); }
};

TEST_F(ErrorTest, NoIdentityNoPrefix) {
  clear_process_identity();
  EXPECT_EQ(process_identity(), "");
  const ConfigError e("unknown key 'x'");
  EXPECT_STREQ(e.what(), "unknown key 'x'");
  EXPECT_EQ(e.message(), "unknown key 'x'");
}

TEST_F(ErrorTest, IdentityPrefixesEveryError) {
  set_process_identity(3, "node7");
  EXPECT_EQ(process_identity(), "rank 3 on node7");
  const ModelError e("m.gguf: tensor 'a' is missing");
  EXPECT_STREQ(e.what(), "rank 3 on node7: m.gguf: tensor 'a' is missing");
  EXPECT_EQ(e.message(), "m.gguf: tensor 'a' is missing");
  EXPECT_EQ(error_message(e), "m.gguf: tensor 'a' is missing");
  // Copies keep both views (thrown and caught by value or reference alike).
  const ModelError copy = e;
  EXPECT_STREQ(copy.what(), e.what());
  EXPECT_EQ(copy.message(), e.message());
  // The identity is read when the error is made: a later change does not rewrite it.
  set_process_identity(4, "node8");
  EXPECT_STREQ(e.what(), "rank 3 on node7: m.gguf: tensor 'a' is missing");
  EXPECT_STREQ(UsageError("x").what(), "rank 4 on node8: x");
  set_process_identity(0, "");
  EXPECT_STREQ(UsageError("x").what(), "rank 0 on ?: x");
}

TEST_F(ErrorTest, PeerErrorNamesThePeerNotThisRank) {
  set_process_identity(0, "head");
  const PeerError e(3, "rank 3 (target 1): configure failed: rank 3 on node7: boom", false);
  EXPECT_STREQ(e.what(), "rank 3 (target 1): configure failed: rank 3 on node7: boom");
  EXPECT_EQ(e.message(), e.what());
  EXPECT_EQ(e.rank, 3);
  EXPECT_FALSE(e.dead);
}

// One base: a handler for dsi::Error sees every area's error; std::exception handlers still
// see them too.
template <typename E, typename... Args>
bool caught_as_error(Args&&... args) {
  try {
    throw E(std::forward<Args>(args)...);
  } catch (const Error&) {
    return true;
  } catch (...) {
    return false;
  }
}

TEST_F(ErrorTest, EveryAreaDerivesFromError) {
  EXPECT_TRUE(caught_as_error<UsageError>("u"));
  EXPECT_TRUE(caught_as_error<ConfigError>("c"));
  EXPECT_TRUE(caught_as_error<ModelError>("m"));
  EXPECT_TRUE(caught_as_error<GpuBindingError>("g"));
  EXPECT_TRUE(caught_as_error<CudaError>("cuda", 2));
  EXPECT_TRUE(caught_as_error<CublasError>("cublas", 3));
  EXPECT_TRUE(caught_as_error<NcclError>("nccl", 4));
  EXPECT_TRUE(caught_as_error<TransportError>("t"));
  EXPECT_TRUE(caught_as_error<DataPlaneError>("d"));
  EXPECT_TRUE(caught_as_error<NcclChannelError>("n"));
  EXPECT_TRUE(caught_as_error<ProtocolError>("p"));
  EXPECT_TRUE(caught_as_error<PeerError>(1, "peer", true));
  EXPECT_TRUE(caught_as_error<WorkerFatal>("w"));
  // Preemption is control flow, not a failure: a failure handler must not swallow it.
  EXPECT_FALSE(caught_as_error<Cancelled>());
  EXPECT_EQ(CudaError("x", 700).code(), 700);
  // The data plane's errors are transport errors.
  EXPECT_THROW(throw DataPlaneError("x"), TransportError);
  EXPECT_THROW(throw NcclChannelError("x"), TransportError);
}

TEST_F(ErrorTest, ErrorMessageOfAnyException) {
  set_process_identity(2, "n");
  EXPECT_EQ(error_message(std::runtime_error("plain")), "plain");
  EXPECT_EQ(error_message(WorkerFatal("w")), "w");
  EXPECT_EQ(error_message(Cancelled()), "forward cancelled");
}

// MPI is not started in this binary, so MPI's own error strings (which it refuses to give
// before MPI_Init) are checked by tests/mpi/data_channel_conformance.cc; here the code.
TEST_F(ErrorTest, MpiCheckNamesCallPeerAndIdentity) {
  EXPECT_NO_THROW(mpi_check(MPI_SUCCESS, "MPI_Isend", 3));
  set_process_identity(5, "node2");
  try {
    mpi_check(MPI_ERR_RANK, "MPI_Isend", 3);
    FAIL() << "no TransportError";
  } catch (const TransportError& e) {
    EXPECT_EQ(std::string(e.what()), "rank 5 on node2: MPI_Isend (peer rank 3): MPI error code " +
                                         std::to_string(MPI_ERR_RANK));
  }
  try {
    mpi_check(MPI_ERR_COMM, "MPI_Comm_dup");
    FAIL() << "no TransportError";
  } catch (const TransportError& e) {
    EXPECT_EQ(std::string(e.message()).rfind("MPI_Comm_dup: ", 0), 0u) << e.what();
  }
}

}  // namespace
}  // namespace dsi
