// The balancing seam: one small interface, one file per algorithm, a registry table.
// Balancers are pure: they see candidates and a key, never sockets or clocks.
#pragma once

#include "config/model.h"

#include <cstddef>
#include <memory>
#include <span>
#include <string_view>

namespace backend {

// One server as a balancer sees it.
struct Candidate {
  std::string_view identity; // stable across processes: the server as configured/resolved
  std::size_t active = 0;    // sessions on it now
  bool usable = true;        // up, and not already tried by this session
};

class Balancer {
public:
  virtual ~Balancer() = default;
  // Index of the candidate to use, or -1 when none is usable. `key` is what the hash modes hash
  // (the client address for source_hash, the user for user_hash); others ignore it.
  virtual int pick(std::span<const Candidate> candidates, std::string_view key) = 0;
};

std::unique_ptr<Balancer> makeRoundRobin();
std::unique_ptr<Balancer> makeLeastConn();
std::unique_ptr<Balancer> makeRendezvousHash();

// The catalogue: one row per `balance` mode, saying how to make it and what it hashes.
enum class BalanceKey {
  None,          // round_robin, least_conn: no key
  ClientAddress, // source_hash: the client's IP (behind a trusted PROXY header, its source)
  User,          // user_hash: the user name, case folded (login mode)
};
struct BalancerInfo {
  config::Balance balance;
  const char* name; // as the config spells it
  std::unique_ptr<Balancer> (*make)();
  BalanceKey key;
};
const BalancerInfo& balancerInfo(config::Balance balance);
std::unique_ptr<Balancer> makeBalancer(config::Balance balance);

// The 64-bit hash rendezvous hashing ranks servers by (FNV-1a, then a splitmix64 finaliser):
// the same in every process and on every machine.
std::uint64_t rendezvousScore(std::string_view key, std::string_view identity);

} // namespace backend
