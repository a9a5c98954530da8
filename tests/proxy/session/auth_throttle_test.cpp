// Abuse control (SPEC §8): delays after failures per address+user and per address, a block
// after many, the window, success refunding the attempt.
#include "proxy/session/auth_throttle.h"

#include <gtest/gtest.h>

namespace session {
namespace {

using std::chrono::milliseconds;

config::Limits limits() {
  config::Limits l; // defaults: 5 per user (20 per address) in 10 min, delay to 30 s, block at 50
  return l;
}

TEST(AuthThrottle, DelayDoublesAfterFiveFailuresPerUserUpToTheCap) {
  AuthThrottle t(limits());
  std::uint64_t now = 1000;
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(t.attempt("192.0.2.1", "alice", now).delay, milliseconds(0)) << i;
  }
  for (std::int64_t delay : {1000, 2000, 4000, 8000, 16000, 30000, 30000}) {
    AuthThrottle::Decision d = t.attempt("192.0.2.1", "alice", now);
    EXPECT_FALSE(d.blocked);
    EXPECT_EQ(d.delay, milliseconds(delay));
  }
  // Another user from the same address is not delayed yet (12 < 20 per address) ...
  EXPECT_EQ(t.attempt("192.0.2.1", "bob", now).delay, milliseconds(0));
  // ... and another address not at all.
  EXPECT_EQ(t.attempt("192.0.2.2", "alice", now).delay, milliseconds(0));
}

TEST(AuthThrottle, ParallelAttemptsCountAsTheyStart) {
  AuthThrottle t(limits());
  // Six attempts in flight at once (no verdict yet): the sixth already waits.
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(t.attempt("192.0.2.5", "alice", 0).delay, milliseconds(0));
  }
  EXPECT_EQ(t.attempt("192.0.2.5", "alice", 0).delay, milliseconds(1000));
}

TEST(AuthThrottle, ManyUsersFromOneAddressAreDelayedThenBlocked) {
  AuthThrottle t(limits());
  std::uint64_t now = 5000;
  for (int i = 0; i < 20; ++i) {
    t.attempt("2001:db8::", "user" + std::to_string(i), now);
  }
  EXPECT_EQ(t.attempt("2001:db8::", "fresh", now).delay, milliseconds(1000));
  for (int i = 21; i < 49; ++i) {
    EXPECT_FALSE(t.attempt("2001:db8::", "user" + std::to_string(i), now).blocked);
  }
  EXPECT_FALSE(t.attempt("2001:db8::", "user49", now).blocked); // the 50th failure ...
  EXPECT_TRUE(t.attempt("2001:db8::", "fresh", now).blocked);   // ... blocks the address
  EXPECT_TRUE(t.attempt("2001:db8::", "fresh", now + 599000).blocked);
  // auth_block (10 min) later the address may try again, its count starting over.
  AuthThrottle::Decision after = t.attempt("2001:db8::", "other", now + 600001);
  EXPECT_FALSE(after.blocked);
  EXPECT_EQ(after.delay, milliseconds(0));
}

TEST(AuthThrottle, TheWindowForgetsAndSuccessRefunds) {
  AuthThrottle t(limits());
  for (int i = 0; i < 6; ++i) {
    t.attempt("192.0.2.9", "carol", 0);
  }
  EXPECT_GT(t.attempt("192.0.2.9", "carol", 1000).delay, milliseconds(0));
  EXPECT_EQ(t.attempt("192.0.2.9", "carol", 600000).delay, milliseconds(0)); // window over
  for (int i = 0; i < 6; ++i) {
    t.attempt("192.0.2.9", "dave", 0);
  }
  t.succeeded("192.0.2.9", "dave");
  EXPECT_EQ(t.attempt("192.0.2.9", "dave", 1).delay, milliseconds(0));
  // Good logins do not add up: a hundred of them never delay anyone.
  for (int i = 0; i < 100; ++i) {
    EXPECT_EQ(t.attempt("192.0.2.10", "erin", 2).delay, milliseconds(0)) << i;
    t.succeeded("192.0.2.10", "erin");
  }
}

TEST(AuthThrottle, OneUserFromManyAddressesIsDelayedNeverBlocked) {
  AuthThrottle t(limits());
  // A distributed guess: one failure per address, never reaching a per-address threshold.
  for (int i = 0; i < 20; ++i) {
    AuthThrottle::Decision d = t.attempt("198.51.100." + std::to_string(i), "Alice", 0);
    EXPECT_EQ(d.delay, milliseconds(0)) << i;
  }
  // The 21st failure for the user, from yet another address, waits ...
  EXPECT_EQ(t.attempt("203.0.113.1", "Alice", 0).delay, milliseconds(1000));
  EXPECT_EQ(t.attempt("203.0.113.2", "Alice", 0).delay, milliseconds(2000));
  // ... and however many follow, the user is delayed at most auth_max_delay, never blocked.
  for (int i = 0; i < 100; ++i) {
    AuthThrottle::Decision d = t.attempt("192.0.2." + std::to_string(i), "Alice", 0);
    EXPECT_FALSE(d.blocked) << i;
    EXPECT_LE(d.delay, milliseconds(30000)) << i;
  }
  // Another user is not affected.
  EXPECT_EQ(t.attempt("203.0.113.3", "bob", 0).delay, milliseconds(0));
}

TEST(AuthThrottle, ZeroDisablesDelaysAndBlocks) {
  config::Limits l = limits();
  l.auth_failures_before_delay = 0;
  l.auth_failures_before_block = 0;
  AuthThrottle t(l);
  for (int i = 0; i < 100; ++i) {
    AuthThrottle::Decision d = t.attempt("192.0.2.3", "eve", 0);
    EXPECT_FALSE(d.blocked);
    EXPECT_EQ(d.delay, milliseconds(0));
  }
}

} // namespace
} // namespace session
