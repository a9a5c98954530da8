// The balancing seam: one small interface, one file per algorithm.
#pragma once

#include <cstddef>
#include <memory>
#include <vector>

#include "config/model.h"

namespace backend {

struct Server;

// What a balancer may look at when choosing.
struct PickContext {
  // Servers already tried for this session; a retry must choose another one when it can.
  const std::vector<const Server*>* tried = nullptr;
};

class Balancer {
public:
  virtual ~Balancer() = default;
  // Index into `servers` of the one to use, or -1 when none is usable.
  virtual int pick(const std::vector<Server>& servers, const PickContext& context) = 0;
};

std::unique_ptr<Balancer> makeRoundRobin();

// The registry of algorithms. Until the balancing issue lands every mode uses round robin.
std::unique_ptr<Balancer> makeBalancer(config::Balance balance);

} // namespace backend
