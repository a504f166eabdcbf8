#include "transport/nccl_data_channel.h"
#include "transport/mpi_data_channel.h"

#include <fmt/format.h>

#ifndef DSI_WITH_CUDA

namespace dsi {

std::unique_ptr<DataChannel> make_nccl_data_channel(MPI_Comm, const NcclChannelOptions&) {
  throw NcclChannelError("this dsi was built without CUDA/NCCL (nvcc or NCCL not found)");
}

}  // namespace dsi

#else

#include <cuda_runtime.h>
#include <nccl.h>

#include <atomic>
#include <cstring>
#include <list>
#include <thread>

#include "common/gpu_binding.h"
#include "kernels/cuda_check.h"
#include "transport/mpi_check.h"

namespace dsi {
namespace {

constexpr int kHeaderTag = 19;
constexpr auto kShutdownWait = std::chrono::seconds(2);

// What the sender tells the receiver over MPI before the payload follows over NCCL.
struct DeviceHeader {
  uint32_t run;
  uint32_t kind;
  uint64_t stream;
  int64_t index;
  uint64_t bytes;
};
static_assert(sizeof(DeviceHeader) == 32);

// Makes `device` current on this thread for the scope; restores the caller's device after
// (best effort: a destructor cannot report, and the caller's next CUDA call would).
class DeviceScope {
 public:
  explicit DeviceScope(int device) {
    CUDA_CHECK(cudaGetDevice(&prev_));
    if (prev_ != device) CUDA_CHECK(cudaSetDevice(device));
  }
  ~DeviceScope() { (void)cudaSetDevice(prev_); }
  DeviceScope(const DeviceScope&) = delete;
  DeviceScope& operator=(const DeviceScope&) = delete;

 private:
  int prev_ = 0;
};

// ncclGroupStart .. ncclGroupEnd: a throw between them still ends the group, which would
// otherwise stay open on this thread and silently hold back every later NCCL call of it (the
// aborts of the clean-up included).
class NcclGroup {
 public:
  NcclGroup() { NCCL_CHECK(nccl().group_start()); }
  ~NcclGroup() {
    if (open_) (void)nccl().group_end();
  }
  NcclGroup(const NcclGroup&) = delete;
  NcclGroup& operator=(const NcclGroup&) = delete;
  void end() {
    open_ = false;
    const ncclResult_t r = nccl().group_end();
    if (r != ncclSuccess && r != ncclInProgress) NCCL_CHECK(r);
  }

 private:
  bool open_ = true;
};

// Polls non-blocking communicators until none is in progress. Returns the first error,
// ncclInProgress when `deadline` passed first, else ncclSuccess.
ncclResult_t wait_comms(const std::vector<ncclComm_t>& comms, Clock::time_point deadline) {
  for (;;) {
    bool pending = false;
    for (ncclComm_t c : comms) {
      ncclResult_t state = ncclSuccess;
      const ncclResult_t r = nccl().comm_get_async_error(c, &state);
      if (r != ncclSuccess) return r;
      if (state == ncclInProgress) {
        pending = true;
      } else if (state != ncclSuccess) {
        return state;
      }
    }
    if (!pending) return ncclSuccess;
    if (Clock::now() >= deadline) return ncclInProgress;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

// "NCCL error on GPU 1 (0000:1b:00.0): ncclSend: unhandled system error (<NCCL's last error>)",
// as NCCL_CHECK words it.
NcclError nccl_error(const char* what, ncclResult_t r, ncclComm_t comm) {
  return NcclError(fmt::format("NCCL error on {}: {}: {} ({})", detail::gpu_label(), what,
                               nccl().get_error_string(r), nccl().get_last_error(comm)),
                   r);
}

// An NCCL call on a non-blocking communicator: ncclInProgress means "wait for the
// communicator before the next call"; a bounded wait, then the usual error check.
void nccl_call(ncclResult_t r, ncclComm_t comm, const char* what) {
  if (r == ncclInProgress) r = wait_comms({comm}, Clock::now() + std::chrono::seconds(30));
  if (r == ncclInProgress) {
    throw NcclError(
        fmt::format("NCCL error on {}: {} still in progress after 30 s", detail::gpu_label(), what),
        r);
  }
  if (r != ncclSuccess) throw nccl_error(what, r, comm);
}

// One direction between two ranks: a two-rank communicator (sender is its rank 0) and this
// side's stream for it.
struct Pipe {
  ncclComm_t comm = nullptr;
  cudaStream_t stream = nullptr;
  cudaEvent_t caller_done = nullptr;  // sender: the caller's stream at send_device
  cudaEvent_t copied = nullptr;       // sender: src copied into the channel's buffer
};

// A device transfer received (or on its way): its staging buffer and events.
struct Item {
  size_t bytes = 0;
  void* staging = nullptr;
  cudaEvent_t ready = nullptr;    // the bytes are in `staging`
  std::vector<cudaEvent_t> uses;  // copies out of `staging` (recv_device), on callers' streams
};

class NcclDataChannel final : public DataChannel {
 public:
  NcclDataChannel(MPI_Comm comm, const NcclChannelOptions& o)
      : participate_(o.participate), poll_us_(std::max(1, o.poll_us)) {
    mpi_check(MPI_Comm_rank(comm, &rank_), "MPI_Comm_rank");
    mpi_check(MPI_Comm_size(comm, &size_), "MPI_Comm_size");
    host_ = make_mpi_data_channel(comm, o.poll_us);
    mpi_check(MPI_Comm_dup(comm, &hdr_comm_), "MPI_Comm_dup");
    mpi_errors_return(hdr_comm_);
  }

  // Collective over `comm`; throws NcclChannelError on every rank if any rank fails.
  void init(MPI_Comm comm, const NcclChannelOptions& o) {
    std::vector<int> part(size_);
    int me = participate_ ? 1 : 0;
    mpi_check(MPI_Allgather(&me, 1, MPI_INT, part.data(), 1, MPI_INT, comm), "MPI_Allgather");

    // 1. Device, memory pool, streams; one NCCL id for each pipe this rank sends on.
    std::vector<ncclUniqueId> out(size_), in(size_);
    std::string err;
    if (participate_) {
      try {
        device_ = o.device >= 0 ? o.device : bound_cuda_device(-1);
        CUDA_CHECK(cudaSetDevice(device_));
        cudaMemPoolProps props{};
        props.allocType = cudaMemAllocationTypePinned;
        props.location.type = cudaMemLocationTypeDevice;
        props.location.id = device_;
        CUDA_CHECK(cudaMemPoolCreate(&pool_, &props));
        uint64_t keep = UINT64_MAX;  // keep freed staging memory for reuse
        CUDA_CHECK(cudaMemPoolSetAttribute(pool_, cudaMemPoolAttrReleaseThreshold, &keep));
        CUDA_CHECK(cudaStreamCreateWithFlags(&free_stream_, cudaStreamNonBlocking));
        for (int p = 0; p < size_; ++p) {
          if (p == rank_ || !part[p]) continue;
          NCCL_CHECK(nccl().get_unique_id(&out[p]));
          for (auto* pipes : {&send_, &recv_}) {
            Pipe& pipe = (*pipes)[p];
            CUDA_CHECK(cudaStreamCreateWithFlags(&pipe.stream, cudaStreamNonBlocking));
            CUDA_CHECK(cudaEventCreateWithFlags(&pipe.caller_done, cudaEventDisableTiming));
            CUDA_CHECK(cudaEventCreateWithFlags(&pipe.copied, cudaEventDisableTiming));
          }
        }
      } catch (const std::exception& e) {
        err = error_message(e);
      }
    }
    agree(comm, err);
    mpi_check(MPI_Alltoall(out.data(), sizeof(ncclUniqueId), MPI_BYTE, in.data(),
                           sizeof(ncclUniqueId), MPI_BYTE, comm),
              "MPI_Alltoall");

    // 2. The communicators, all in one group (one thread creates many), non-blocking so
    // that the wait has a deadline; then one byte through every pipe, which makes NCCL
    // connect them now rather than inside a later send (where it would wait for the peer).
    if (participate_) {
      try {
        const auto deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                                 std::chrono::duration<double>(o.init_timeout_s));
        ncclConfig_t cfg = NCCL_CONFIG_INITIALIZER;
        cfg.blocking = 0;
        {
          NcclGroup group;
          for (auto& [p, pipe] : send_)
            nccl_ok(nccl().comm_init_rank_config(&pipe.comm, 2, out[p], 0, &cfg),
                    "ncclCommInitRankConfig");
          for (auto& [p, pipe] : recv_)
            nccl_ok(nccl().comm_init_rank_config(&pipe.comm, 2, in[p], 1, &cfg),
                    "ncclCommInitRankConfig");
          group.end();
        }
        check_wait(wait_comms(all_comms(), deadline), "creating the communicators");
        void* probe = nullptr;
        CUDA_CHECK(cudaMalloc(&probe, 2 * send_.size() + 2));
        auto* bytes = static_cast<uint8_t*>(probe);
        {
          NcclGroup group;
          size_t i = 0;
          for (auto& [p, pipe] : send_)
            nccl_ok(nccl().send(bytes + i++, 1, ncclUint8, 1, pipe.comm, pipe.stream), "ncclSend");
          for (auto& [p, pipe] : recv_)
            nccl_ok(nccl().recv(bytes + i++, 1, ncclUint8, 0, pipe.comm, pipe.stream), "ncclRecv");
          group.end();
        }
        check_wait(wait_comms(all_comms(), deadline), "connecting the pipes");
        bool idle = false;
        while (!(idle = pipes_idle()) && Clock::now() < deadline) {
          std::this_thread::sleep_for(std::chrono::milliseconds(1));
        }
        // Not idle: leak the probe bytes (cudaFree would wait for the device, maybe forever).
        if (!idle) throw NcclChannelError("connecting the pipes: no answer before the deadline");
        CUDA_CHECK(cudaFree(probe));
      } catch (const std::exception& e) {
        err = error_message(e);
        failed_ = true;
      }
    }
    agree(comm, err);
    ready_ = participate_;
    if (participate_) progress_ = std::thread([this] { progress_loop(); });
  }

  ~NcclDataChannel() override {
    stop_ = true;
    if (progress_.joinable()) progress_.join();
    if (device_ >= 0) shutdown_device();
    const auto deadline = Clock::now() + std::chrono::milliseconds(500);
    while (!reap_headers() && Clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    for (auto& [req, h] : pending_) {
      if (req == MPI_REQUEST_NULL) continue;
      mpi_warn(MPI_Cancel(&req), "MPI_Cancel");
      mpi_warn(MPI_Request_free(&req), "MPI_Request_free");
    }
    mpi_warn(MPI_Comm_free(&hdr_comm_), "MPI_Comm_free");
  }

  // Host memory: the MPI host-buffer channel.
  void send(int dst, const DataKey& key, std::vector<uint8_t> bytes) override {
    host_->send(dst, key, std::move(bytes));
  }
  bool recv(const DataKey& key, std::vector<uint8_t>& out, Clock::time_point deadline,
            const CancelFlag* cancel) override {
    return host_->recv(key, out, deadline, cancel);
  }
  void discard(const std::function<bool(const DataKey&)>& stale) override {
    host_->discard(stale);
    if (!ready_) return;
    DeviceScope scope(device_);
    std::lock_guard lk(mu_);
    for (auto it = items_.begin(); it != items_.end();) {
      if (stale(it->first)) {
        release_locked(it->second);
        it = items_.erase(it);
      } else {
        ++it;
      }
    }
  }

  bool moves_device_memory() const override { return ready_; }

  void send_device(int dst, const DataKey& key, const void* src, size_t bytes,
                   void* stream) override {
    if (!ready_) throw std::logic_error("this rank takes no part in the NCCL data plane");
    DeviceScope scope(device_);
    auto* s = static_cast<cudaStream_t>(stream);
    std::lock_guard lk(mu_);
    throw_if_failed_locked();
    if (dst == rank_) {  // to self: a copy on the caller's stream
      Item item{bytes};
      if (bytes > 0) {
        CUDA_CHECK(cudaMallocFromPoolAsync(&item.staging, bytes, pool_, s));
        CUDA_CHECK(cudaMemcpyAsync(item.staging, src, bytes, cudaMemcpyDeviceToDevice, s));
      }
      CUDA_CHECK(cudaEventCreateWithFlags(&item.ready, cudaEventDisableTiming));
      CUDA_CHECK(cudaEventRecord(item.ready, s));
      store_locked(key, item);
      return;
    }
    auto it = send_.find(dst);
    if (it == send_.end()) {
      throw std::invalid_argument(
          fmt::format("send_device to rank {}, which has no NCCL pipe", dst));
    }
    Pipe& pipe = it->second;
    void* buf = nullptr;
    if (bytes > 0) {
      // The pipe copies src once the caller's work so far has run; the caller's later work
      // waits for that copy only, not for the transfer.
      CUDA_CHECK(cudaEventRecord(pipe.caller_done, s));
      CUDA_CHECK(cudaStreamWaitEvent(pipe.stream, pipe.caller_done, 0));
      CUDA_CHECK(cudaMallocFromPoolAsync(&buf, bytes, pool_, pipe.stream));
      CUDA_CHECK(cudaMemcpyAsync(buf, src, bytes, cudaMemcpyDeviceToDevice, pipe.stream));
      CUDA_CHECK(cudaEventRecord(pipe.copied, pipe.stream));
      CUDA_CHECK(cudaStreamWaitEvent(s, pipe.copied, 0));
    }
    // The send is enqueued first, then its header goes out, both under mu_: the pipe's sends
    // are in header order, and the receiver, which posts one receive per header, never waits
    // on a send that was not enqueued. A failure in between leaves the pipe out of step (a
    // send without header, or a non-blocking send enqueued after its timeout), so it fails the
    // channel for good rather than let the next transfer land in the wrong buffer.
    try {
      if (bytes > 0) {
        nccl_call(nccl().send(buf, bytes, ncclUint8, 1, pipe.comm, pipe.stream), pipe.comm,
                  "ncclSend");
        CUDA_CHECK(cudaFreeAsync(buf, pipe.stream));  // after the send, in stream order
      }
      auto& [req, h] = pending_.emplace_back(
          MPI_REQUEST_NULL, DeviceHeader{key.run, static_cast<uint32_t>(key.kind), key.stream,
                                         key.index, static_cast<uint64_t>(bytes)});
      mpi_check(MPI_Isend(&h, sizeof h, MPI_BYTE, dst, kHeaderTag, hdr_comm_, &req), "MPI_Isend",
                dst);
    } catch (const std::exception& e) {
      error_ = fmt::format("a send to rank {} failed: {}", dst, e.what());
      throw;
    }
  }

  bool recv_device(const DataKey& key, void* dst, size_t bytes, void* stream,
                   Clock::time_point deadline, const CancelFlag* cancel) override {
    if (!ready_) throw std::logic_error("this rank takes no part in the NCCL data plane");
    DeviceScope scope(device_);
    auto* s = static_cast<cudaStream_t>(stream);
    std::unique_lock lk(mu_);
    for (;;) {
      throw_if_failed_locked();
      poll_locked();
      auto it = items_.find(key);
      if (it != items_.end()) {
        Item& item = it->second;
        if (item.bytes != bytes) {
          throw std::invalid_argument(
              fmt::format("recv_device of {} bytes, but {} were sent (key stream {} index {})",
                          bytes, item.bytes, key.stream, key.index));
        }
        if (bytes > 0) {
          CUDA_CHECK(cudaStreamWaitEvent(s, item.ready, 0));
          CUDA_CHECK(cudaMemcpyAsync(dst, item.staging, bytes, cudaMemcpyDeviceToDevice, s));
          cudaEvent_t used = nullptr;
          CUDA_CHECK(cudaEventCreateWithFlags(&used, cudaEventDisableTiming));
          item.uses.push_back(used);
          CUDA_CHECK(cudaEventRecord(used, s));
        }
        return true;
      }
      if ((cancel && cancel->cancelled()) || Clock::now() >= deadline) return false;
      // Short waits so that a raised cancel flag is seen promptly.
      cv_.wait_until(lk, std::min(deadline, Clock::now() + std::chrono::microseconds(200)));
    }
  }

 private:
  static void nccl_ok(ncclResult_t r, const char* what) {
    if (r != ncclSuccess && r != ncclInProgress) throw nccl_error(what, r, nullptr);
  }
  static void check_wait(ncclResult_t r, const char* what) {
    if (r == ncclInProgress)
      throw NcclChannelError(fmt::format("{}: no answer before the deadline", what));
    if (r != ncclSuccess) {
      throw NcclChannelError(fmt::format("{}: {} ({})", what, nccl().get_error_string(r),
                                         nccl().get_last_error(nullptr)));
    }
  }

  // Every rank learns whether any failed; all throw the message of the lowest failing rank,
  // "NCCL data plane, rank 3 on node7: ..." (its identity, or "rank 3" outside a session).
  void agree(MPI_Comm comm, const std::string& err) {
    int first = err.empty() ? size_ : rank_;
    mpi_check(MPI_Allreduce(MPI_IN_PLACE, &first, 1, MPI_INT, MPI_MIN, comm), "MPI_Allreduce");
    if (first == size_) return;
    std::string msg;
    if (rank_ == first) {
      const std::string who = process_identity();
      msg = (who.empty() ? fmt::format("rank {}", rank_) : who) + ": " + err;
    }
    int n = static_cast<int>(msg.size());
    mpi_check(MPI_Bcast(&n, 1, MPI_INT, first, comm), "MPI_Bcast");
    msg.resize(n);
    mpi_check(MPI_Bcast(msg.data(), n, MPI_CHAR, first, comm), "MPI_Bcast");
    failed_ = true;
    throw NcclChannelError("NCCL data plane, " + msg);
  }

  std::vector<ncclComm_t> all_comms() const {
    std::vector<ncclComm_t> v;
    for (const auto* pipes : {&send_, &recv_}) {
      for (const auto& [p, pipe] : *pipes) {
        if (pipe.comm) v.push_back(pipe.comm);
      }
    }
    return v;
  }

  bool pipes_idle() const {
    for (const auto* pipes : {&send_, &recv_}) {
      for (const auto& [p, pipe] : *pipes) {
        if (!pipe.stream) continue;
        if (!stream_done(pipe.stream)) return false;
      }
    }
    return true;
  }

  void throw_if_failed_locked() const {
    if (!error_.empty()) throw NcclChannelError("NCCL data channel failed: " + error_);
  }

  // True when every header send has completed, or (reported on stderr) when testing one
  // failed: for the destructor, which must not throw.
  bool reap_headers() {
    std::lock_guard lk(mu_);
    for (auto it = pending_.begin(); it != pending_.end();) {
      int done = 0;
      const int rc = MPI_Test(&it->first, &done, MPI_STATUS_IGNORE);
      if (rc != MPI_SUCCESS) {
        mpi_warn(rc, "MPI_Test");
        return true;
      }
      it = done ? pending_.erase(it) : std::next(it);
    }
    return pending_.empty();
  }

  // Takes every header that has arrived and posts its receive, in arrival order per sender.
  // Returns whether any arrived.
  bool poll_locked() {
    bool any = false;
    for (;;) {
      int flag = 0;
      MPI_Status st;
      mpi_check(MPI_Iprobe(MPI_ANY_SOURCE, kHeaderTag, hdr_comm_, &flag, &st), "MPI_Iprobe");
      if (!flag) break;
      DeviceHeader h;
      mpi_check(
          MPI_Recv(&h, sizeof h, MPI_BYTE, st.MPI_SOURCE, kHeaderTag, hdr_comm_, MPI_STATUS_IGNORE),
          "MPI_Recv", st.MPI_SOURCE);
      any = true;
      Item item{h.bytes};
      if (h.bytes > 0) {
        auto it = recv_.find(st.MPI_SOURCE);
        if (it == recv_.end()) {
          throw NcclChannelError(
              fmt::format("device transfer from rank {}, which has no pipe", st.MPI_SOURCE));
        }
        Pipe& pipe = it->second;
        // The header is taken: a receive that cannot be posted leaves the sender's send
        // waiting on its GPU and the pipe out of step, so the channel fails for good.
        try {
          CUDA_CHECK(cudaMallocFromPoolAsync(&item.staging, h.bytes, pool_, pipe.stream));
          nccl_call(nccl().recv(item.staging, h.bytes, ncclUint8, 0, pipe.comm, pipe.stream),
                    pipe.comm, "ncclRecv");
          CUDA_CHECK(cudaEventCreateWithFlags(&item.ready, cudaEventDisableTiming));
          CUDA_CHECK(cudaEventRecord(item.ready, pipe.stream));
        } catch (const std::exception& e) {
          error_ = fmt::format("a receive from rank {} failed: {}", st.MPI_SOURCE, e.what());
          throw;
        }
      }
      store_locked(DataKey{h.run, static_cast<DataKind>(h.kind), h.stream, h.index}, item);
    }
    for (auto it = pending_.begin(); it != pending_.end();) {
      int done = 0;
      mpi_check(MPI_Test(&it->first, &done, MPI_STATUS_IGNORE), "MPI_Test");
      it = done ? pending_.erase(it) : std::next(it);
    }
    return any;
  }

  void store_locked(const DataKey& key, const Item& item) {
    auto [it, fresh] = items_.try_emplace(key, item);
    if (!fresh) {  // the same key again: the newer transfer replaces the older
      release_locked(it->second);
      it->second = item;
    }
    cv_.notify_all();
  }

  // Frees the staging buffer once its receive and every copy out of it have run.
  void release_locked(Item& item) {
    if (item.ready) CUDA_CHECK(cudaStreamWaitEvent(free_stream_, item.ready, 0));
    for (cudaEvent_t e : item.uses) CUDA_CHECK(cudaStreamWaitEvent(free_stream_, e, 0));
    if (item.staging) CUDA_CHECK(cudaFreeAsync(item.staging, free_stream_));
    // Destroying an event whose work is still queued is allowed (it is released when done).
    if (item.ready) CUDA_CHECK(cudaEventDestroy(item.ready));
    for (cudaEvent_t e : item.uses) CUDA_CHECK(cudaEventDestroy(e));
    item = Item{};
  }

  // Posts receives for arriving headers (so that peers' sends complete) and checks the
  // communicators for asynchronous errors; backs off to 1 ms while nothing arrives.
  void progress_loop() {
    if (const cudaError_t e = cudaSetDevice(device_); e != cudaSuccess) {
      std::lock_guard lk(mu_);
      error_ =
          fmt::format("progress thread: cudaSetDevice({}): {}", device_, cudaGetErrorString(e));
      cv_.notify_all();
      return;
    }
    int sleep_us = poll_us_;
    auto next_check = Clock::now();
    while (!stop_) {
      bool any = false;
      {
        std::lock_guard lk(mu_);
        if (!error_.empty()) break;
        try {
          any = poll_locked();
          if (Clock::now() >= next_check) {
            next_check = Clock::now() + std::chrono::milliseconds(10);
            for (ncclComm_t c : all_comms()) {
              ncclResult_t state = ncclSuccess;
              const ncclResult_t r = nccl().comm_get_async_error(c, &state);
              if (r != ncclSuccess) throw nccl_error("ncclCommGetAsyncError", r, c);
              if (state != ncclSuccess && state != ncclInProgress) {
                throw nccl_error("asynchronous error", state, c);
              }
            }
          }
        } catch (const std::exception& e) {
          error_ = error_message(e);
          cv_.notify_all();
          break;
        }
      }
      sleep_us = any ? poll_us_ : std::min(1000, sleep_us * 2);
      std::this_thread::sleep_for(std::chrono::microseconds(sleep_us));
    }
  }

  // Waits (at most kShutdownWait) for the pipes to drain, still posting receives for headers
  // that arrive meanwhile; then finalises the communicators, or aborts them if not drained.
  // The destroy and abort calls at the end are best effort: the channel is going away and
  // nothing could act on their failure.
  void shutdown_device() {
    try {
      DeviceScope scope(device_);
      bool idle = false;
      const auto deadline = Clock::now() + kShutdownWait;
      for (;;) {
        {
          std::lock_guard lk(mu_);
          if (error_.empty() && !failed_) {
            try {
              poll_locked();
            } catch (const std::exception& e) {
              error_ = error_message(e);
            }
          }
        }
        idle = pipes_idle();
        if (idle || Clock::now() >= deadline) break;
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
      {
        std::lock_guard lk(mu_);
        for (auto& [key, item] : items_) release_locked(item);
        items_.clear();
      }
      const auto comms = all_comms();
      bool clean = idle && error_.empty() && !failed_;
      if (clean) {
        for (ncclComm_t c : comms) {
          const ncclResult_t r = nccl().comm_finalize(c);
          if (r != ncclSuccess && r != ncclInProgress) clean = false;
        }
        clean = clean && wait_comms(comms, Clock::now() + kShutdownWait) == ncclSuccess;
      }
      for (ncclComm_t c : comms) (void)(clean ? nccl().comm_destroy(c) : nccl().comm_abort(c));
    } catch (const std::exception&) {
      for (ncclComm_t c : all_comms()) (void)nccl().comm_abort(c);
    }
    // Work still queued (a copy waiting on an aborted receive) releases these when done.
    for (auto* pipes : {&send_, &recv_}) {
      for (auto& [p, pipe] : *pipes) {
        if (pipe.stream) (void)cudaStreamDestroy(pipe.stream);
        if (pipe.caller_done) (void)cudaEventDestroy(pipe.caller_done);
        if (pipe.copied) (void)cudaEventDestroy(pipe.copied);
      }
    }
    if (free_stream_) (void)cudaStreamDestroy(free_stream_);
    if (pool_) (void)cudaMemPoolDestroy(pool_);
  }

  const bool participate_;
  const int poll_us_;
  int rank_ = 0, size_ = 1;
  int device_ = -1;
  bool ready_ = false;   // the device path works on this rank
  bool failed_ = false;  // init failed somewhere: abort, never finalise
  std::unique_ptr<DataChannel> host_;
  MPI_Comm hdr_comm_ = MPI_COMM_NULL;
  cudaMemPool_t pool_ = nullptr;
  cudaStream_t free_stream_ = nullptr;
  std::map<int, Pipe> send_, recv_;  // by peer rank

  std::mutex mu_;  // everything below, and every NCCL call after init
  std::condition_variable cv_;
  std::list<std::pair<MPI_Request, DeviceHeader> > pending_;  // header sends in flight
  std::map<DataKey, Item> items_;
  std::string error_;  // set by the progress thread: the channel is unusable
  std::atomic<bool> stop_{false};
  std::thread progress_;
};

}  // namespace

std::unique_ptr<DataChannel> make_nccl_data_channel(MPI_Comm comm, const NcclChannelOptions& o) {
  auto ch = std::make_unique<NcclDataChannel>(comm, o);
  ch->init(comm, o);  // on failure, ~NcclDataChannel aborts what was built
  return ch;
}

}  // namespace dsi

#endif  // DSI_WITH_CUDA
