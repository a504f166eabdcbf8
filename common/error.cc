#include "common/error.h"

#include <mutex>

namespace dsi {
namespace {

// Set once by the session before other threads start; the mutex only keeps tests that set
// and clear it honest.
std::mutex g_mu;
std::string g_identity;

}  // namespace

void set_process_identity(int rank, const std::string& host) {
  std::lock_guard lk(g_mu);
  g_identity = "rank " + std::to_string(rank) + " on " + (host.empty() ? "?" : host);
}

void clear_process_identity() {
  std::lock_guard lk(g_mu);
  g_identity.clear();
}

std::string process_identity() {
  std::lock_guard lk(g_mu);
  return g_identity;
}

std::string_view error_message(const std::exception& e) noexcept {
  if (const auto* d = dynamic_cast<const Error*>(&e)) return d->message();
  return e.what();
}

Error::Error(const std::string& message) : Error(process_identity(), message) {}

Error::Error(Unprefixed, const std::string& message) : Error(std::string(), message) {}

Error::Error(std::string prefix, const std::string& message)
    : std::runtime_error(prefix.empty() ? message : prefix + ": " + message),
      prefix_(prefix.empty() ? 0 : prefix.size() + 2) {}

}  // namespace dsi
