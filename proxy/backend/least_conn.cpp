// Least connections: the usable server with the fewest sessions; ties go round robin, so equal
// servers still share new sessions evenly.
#include "proxy/backend/balancer.h"

namespace backend {

namespace {

class LeastConn final : public Balancer {
public:
  int pick(std::span<const Candidate> candidates, std::string_view) override {
    int best = -1;
    std::size_t start = next_++;
    for (std::size_t step = 0; step < candidates.size(); ++step) {
      std::size_t index = (start + step) % candidates.size();
      const Candidate& candidate = candidates[index];
      if (candidate.usable &&
          (best < 0 || candidate.active < candidates[static_cast<std::size_t>(best)].active)) {
        best = static_cast<int>(index);
      }
    }
    return best;
  }

private:
  std::size_t next_ = 0;
};

} // namespace

std::unique_ptr<Balancer> makeLeastConn() { return std::make_unique<LeastConn>(); }

} // namespace backend
