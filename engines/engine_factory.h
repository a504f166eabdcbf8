// Builds a rank's engine from the JSON worker spec the coordinator sends in Configure
// (docs/protocol.md lists its fields).
#pragma once

#include <memory>

#include <nlohmann/json.hpp>

#include "engines/engine.h"

namespace dsi {
std::unique_ptr<Engine> make_engine(const nlohmann::json& spec);
}  // namespace dsi
