// Rendezvous (highest random weight) hashing for source_hash and user_hash: every process with
// the same servers sends a key to the same server without sharing state, the order of `servers`
// does not matter, and removing a server moves only the keys it had.
#include "proxy/backend/balancer.h"

namespace backend {

std::uint64_t rendezvousScore(std::string_view key, std::string_view identity) {
  std::uint64_t hash = 0xcbf29ce484222325ULL; // FNV-1a offset basis
  auto mix = [&](std::string_view bytes) {
    for (unsigned char c : bytes) {
      hash ^= c;
      hash *= 0x100000001b3ULL; // FNV prime
    }
  };
  mix(key);
  mix(std::string_view("\0", 1)); // "ab"+"c" and "a"+"bc" must differ
  mix(identity);
  // splitmix64's finaliser spreads FNV's weak low bits over the whole word.
  hash ^= hash >> 30;
  hash *= 0xbf58476d1ce4e5b9ULL;
  hash ^= hash >> 27;
  hash *= 0x94d049bb133111ebULL;
  hash ^= hash >> 31;
  return hash;
}

namespace {

class RendezvousHash final : public Balancer {
public:
  int pick(std::span<const Candidate> candidates, std::string_view key) override {
    if (key.empty()) {
      return fallback_->pick(candidates, key);
    }
    int best = -1;
    std::uint64_t bestScore = 0;
    for (std::size_t index = 0; index < candidates.size(); ++index) {
      if (!candidates[index].usable) {
        continue;
      }
      std::uint64_t score = rendezvousScore(key, candidates[index].identity);
      // Ties (vanishingly rare) go to the smaller identity, so every process agrees.
      if (best < 0 || score > bestScore ||
          (score == bestScore &&
           candidates[index].identity < candidates[static_cast<std::size_t>(best)].identity)) {
        best = static_cast<int>(index);
        bestScore = score;
      }
    }
    return best;
  }

private:
  std::unique_ptr<Balancer> fallback_ = makeRoundRobin();
};

} // namespace

std::unique_ptr<Balancer> makeRendezvousHash() { return std::make_unique<RendezvousHash>(); }

} // namespace backend
