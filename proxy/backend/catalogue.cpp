// The balancing modes as a table (STYLE #7): a new algorithm is one file and one row here.
#include "proxy/backend/balancer.h"

#include <array>

namespace backend {

namespace {

constexpr std::array<BalancerInfo, 4> kBalancers = {{
    {config::Balance::RoundRobin, "round_robin", makeRoundRobin, BalanceKey::None},
    {config::Balance::LeastConn, "least_conn", makeLeastConn, BalanceKey::None},
    {config::Balance::SourceHash, "source_hash", makeRendezvousHash, BalanceKey::ClientAddress},
    {config::Balance::UserHash, "user_hash", makeRendezvousHash, BalanceKey::User},
}};

} // namespace

const BalancerInfo& balancerInfo(config::Balance balance) {
  for (const BalancerInfo& info : kBalancers) {
    if (info.balance == balance) {
      return info;
    }
  }
  return kBalancers.front();
}

std::unique_ptr<Balancer> makeBalancer(config::Balance balance) {
  return balancerInfo(balance).make();
}

} // namespace backend
