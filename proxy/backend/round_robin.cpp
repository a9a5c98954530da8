// Round robin: each new session takes the next usable server in turn.
#include "proxy/backend/balancer.h"

namespace backend {

namespace {

class RoundRobin final : public Balancer {
public:
  int pick(std::span<const Candidate> candidates, std::string_view) override {
    for (std::size_t step = 0; step < candidates.size(); ++step) {
      std::size_t index = next_++ % candidates.size();
      if (candidates[index].usable) {
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

} // namespace backend
