// Round robin: each new session takes the next server in turn, skipping those already tried.
#include "proxy/backend/balancer.h"
#include "proxy/backend/pool.h"

#include <algorithm>

namespace backend {

namespace {

class RoundRobin final : public Balancer {
public:
  int pick(const std::vector<Server>& servers, const PickContext& context) override {
    if (servers.empty()) {
      return -1;
    }
    for (std::size_t step = 0; step < servers.size(); ++step) {
      std::size_t index = next_++ % servers.size();
      const Server* server = &servers[index];
      bool tried =
          context.tried != nullptr &&
          std::find(context.tried->begin(), context.tried->end(), server) != context.tried->end();
      if (!tried) {
        return static_cast<int>(index);
      }
    }
    return -1;
  }

private:
  std::size_t next_ = 0;
};

} // namespace

std::unique_ptr<Balancer> makeRoundRobin() { return std::make_unique<RoundRobin>(); }

std::unique_ptr<Balancer> makeBalancer(config::Balance) { return makeRoundRobin(); }

} // namespace backend
