// The balancers: round robin, least connections, and rendezvous hashing's two promises
// (same choice everywhere, minimal movement when a server goes).
#include "proxy/backend/balancer.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <string>
#include <vector>

namespace backend {
namespace {

std::vector<Candidate> candidates(const std::vector<std::string>& names) {
  std::vector<Candidate> out;
  for (const std::string& name : names) {
    out.push_back({name, 0, true});
  }
  return out;
}

const std::vector<std::string> kServers = {"10.0.0.1:143", "10.0.0.2:143", "10.0.0.3:143"};

TEST(RoundRobin, TakesTurnsAndSkipsUnusable) {
  auto balancer = makeRoundRobin();
  auto list = candidates(kServers);
  std::vector<int> picks;
  for (int i = 0; i < 6; ++i) {
    picks.push_back(balancer->pick(list, ""));
  }
  EXPECT_EQ(picks, (std::vector<int>{0, 1, 2, 0, 1, 2}));
  list[1].usable = false;
  for (int i = 0; i < 4; ++i) {
    EXPECT_NE(balancer->pick(list, ""), 1);
  }
  for (Candidate& candidate : list) {
    candidate.usable = false;
  }
  EXPECT_EQ(balancer->pick(list, ""), -1);
}

TEST(LeastConn, PrefersTheIdlestAndBreaksTiesInTurn) {
  auto balancer = makeLeastConn();
  auto list = candidates(kServers);
  list[0].active = 5;
  list[1].active = 2;
  list[2].active = 7;
  EXPECT_EQ(balancer->pick(list, ""), 1);
  list[1].usable = false;
  EXPECT_EQ(balancer->pick(list, ""), 0);
  list = candidates(kServers); // all equal: every server gets its turn
  std::map<int, int> counts;
  for (int i = 0; i < 30; ++i) {
    ++counts[balancer->pick(list, "")];
  }
  EXPECT_EQ(counts[0], 10);
  EXPECT_EQ(counts[1], 10);
  EXPECT_EQ(counts[2], 10);
}

std::string choose(Balancer& balancer, const std::vector<Candidate>& list, const std::string& key) {
  int index = balancer.pick(list, key);
  return index < 0 ? "" : std::string(list[static_cast<std::size_t>(index)].identity);
}

TEST(RendezvousHash, SameChoiceWhateverTheServerOrder) {
  auto balancer = makeRendezvousHash();
  auto forward = candidates(kServers);
  std::vector<std::string> reversed(kServers.rbegin(), kServers.rend());
  auto backward = candidates(reversed);
  for (int i = 0; i < 2000; ++i) {
    std::string key = "user" + std::to_string(i) + "@example.org";
    EXPECT_EQ(choose(*balancer, forward, key), choose(*balancer, backward, key)) << key;
  }
}

TEST(RendezvousHash, SpreadsKeysEvenly) {
  auto balancer = makeRendezvousHash();
  auto list = candidates(kServers);
  std::map<std::string, int> counts;
  const int keys = 30000;
  for (int i = 0; i < keys; ++i) {
    ++counts[choose(*balancer, list,
                    "198.51.100." + std::to_string(i % 256) + "/" + std::to_string(i))];
  }
  for (const std::string& server : kServers) {
    EXPECT_NEAR(counts[server], keys / 3, keys / 3 / 10) << server; // within 10%
  }
}

TEST(RendezvousHash, RemovingAServerMovesOnlyItsKeys) {
  auto balancer = makeRendezvousHash();
  std::vector<std::string> five = {"a:143", "b:143", "c:143", "d:143", "e:143"};
  std::vector<std::string> four = {"a:143", "b:143", "d:143", "e:143"}; // "c" is gone
  auto before = candidates(five);
  auto after = candidates(four);
  int moved = 0;
  for (int i = 0; i < 20000; ++i) {
    std::string key = "user" + std::to_string(i);
    std::string was = choose(*balancer, before, key);
    std::string now = choose(*balancer, after, key);
    if (was != "c:143") {
      EXPECT_EQ(was, now) << key << " moved although its server stayed";
    } else {
      ++moved;
    }
  }
  EXPECT_NEAR(moved, 20000 / 5, 20000 / 5 / 10);
  // A server that is down is skipped the same way: only its keys go elsewhere.
  before[2].usable = false;
  for (int i = 0; i < 2000; ++i) {
    std::string key = "user" + std::to_string(i);
    EXPECT_EQ(choose(*balancer, before, key), choose(*balancer, after, key));
  }
}

TEST(RendezvousHash, ScoresArePinned) {
  // Every postern instance, of every version, must rank servers alike: changing the hash would
  // move every user at the next rolling upgrade. These values are the contract.
  EXPECT_EQ(rendezvousScore("", ""), 0x25fc6dd36ce04b20ULL);
  EXPECT_EQ(rendezvousScore("alice", "imap-1.internal:143"), 0xf1058aaaebb04597ULL);
  EXPECT_NE(rendezvousScore("ab", "c"), rendezvousScore("a", "bc"));
}

TEST(RendezvousHash, NoKeyFallsBackToRoundRobin) {
  auto balancer = makeRendezvousHash();
  auto list = candidates(kServers);
  std::vector<int> picks;
  for (int i = 0; i < 3; ++i) {
    picks.push_back(balancer->pick(list, ""));
  }
  std::sort(picks.begin(), picks.end());
  EXPECT_EQ(picks, (std::vector<int>{0, 1, 2}));
}

} // namespace
} // namespace backend

namespace backend {
namespace {

// The catalogue has one row per mode the config knows, each saying what it hashes.
TEST(BalancerCatalogue, EveryModeHasARowWithItsKey) {
  struct Expected {
    config::Balance balance;
    const char* name;
    BalanceKey key;
  };
  for (const Expected& row :
       {Expected{config::Balance::RoundRobin, "round_robin", BalanceKey::None},
        Expected{config::Balance::LeastConn, "least_conn", BalanceKey::None},
        Expected{config::Balance::SourceHash, "source_hash", BalanceKey::ClientAddress},
        Expected{config::Balance::UserHash, "user_hash", BalanceKey::User}}) {
    const BalancerInfo& info = balancerInfo(row.balance);
    EXPECT_EQ(info.balance, row.balance) << row.name;
    EXPECT_STREQ(info.name, row.name);
    EXPECT_EQ(info.key, row.key) << row.name;
    EXPECT_NE(makeBalancer(row.balance), nullptr) << row.name;
  }
}

} // namespace
} // namespace backend
