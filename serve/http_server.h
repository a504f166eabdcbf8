// The HTTP side of `dsi serve` (Boost.Beast on one I/O thread): it parses and checks requests,
// answers the cheap endpoints itself (/health, /metrics, /v1/models, errors), and queues
// generations in a bounded FIFO for the backend (the coordinator's thread), which takes them
// one at a time with next_job() and reports through the Job. A client that disconnects, or a
// request whose deadline passes, raises the job's cancel flag; the backend stops the
// generation at its next message.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "common/cancel.h"
#include "serve/api.h"
#include "serve/metrics.h"

namespace dsi::serve {

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8000;            // 0: any free port (port() says which)
  std::string api_key;        // empty: no authentication
  std::string model = "dsi";  // the name /v1/models lists
  size_t max_body = 1 << 20;
  int queue = 16;                  // requests waiting beyond the running one; more get 429
  double read_timeout_s = 10;      // a request's header and body, and keep-alive idleness
  double request_timeout_s = 600;  // arrival to the end of the answer
  int max_connections = 1024;      // more are closed at once
  ApiLimits limits;
};

// A generation queued by the server. The backend calls text() as text is decided and then
// exactly one of done() or fail(); they are thread-safe and return at once.
class Job {
 public:
  virtual ~Job() = default;
  const GenRequest& request() const { return req_; }
  // Raised when the client has gone or the deadline passed (or by the backend, at a stop
  // string): stop generating.
  CancelFlag& cancel() { return cancel_; }
  bool expired() const { return Clock::now() >= deadline_; }
  Clock::time_point deadline() const { return deadline_; }
  Clock::time_point arrived() const { return arrived_; }
  virtual void text(std::string delta) = 0;
  // The whole text (what text() sent, for a stream), why it ended, usage and the dsi object.
  virtual void done(Completion c) = 0;
  virtual void fail(const ApiError& e) = 0;

 protected:
  GenRequest req_;
  CancelFlag cancel_;
  Clock::time_point arrived_ = Clock::now(), deadline_;
};

class HttpServer {
 public:
  // Called on the I/O thread for every generation request before it is queued: fills
  // GenRequest::tokens, or throws ApiError (a prompt over the context, say).
  using Prepare = std::function<void(GenRequest&)>;
  HttpServer(ServerOptions opts, Metrics& metrics, Prepare prepare);
  ~HttpServer();
  // Binds and starts serving on its own thread; throws dsi::Error naming the address when it
  // cannot bind. SIGTERM and SIGINT start a drain.
  void start();
  int port() const { return port_; }
  // The next queued job, or null after `wait`.
  std::shared_ptr<Job> next_job(std::chrono::milliseconds wait);
  // Whether the backend has finished: a drain began and nothing is queued.
  bool drained() const;
  // Stops taking generations (503) and lets the queue empty.
  void drain();
  // Flushes what is being written (up to a second), closes every connection and joins.
  void stop();
  // The backend's state, for /metrics and /health.
  void set_running(bool running);

  struct Impl;  // the I/O state, shared with the connections (http_server.cc)

 private:
  std::unique_ptr<Impl> impl_;
  int port_ = 0;
};

}  // namespace dsi::serve
