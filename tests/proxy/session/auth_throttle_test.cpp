// Abuse control (SPEC §8): delays after failures per address+user and per address, a block
// after many, the window, and success clearing the user's count.
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
    EXPECT_EQ(t.check("192.0.2.1", "alice", now).delay, milliseconds(0)) << i;
    t.failed("192.0.2.1", "alice", now);
  }
  std::int64_t expected[] = {1000, 2000, 4000, 8000, 16000, 30000, 30000};
  for (std::int64_t delay : expected) {
    AuthThrottle::Decision d = t.check("192.0.2.1", "alice", now);
    EXPECT_FALSE(d.blocked);
    EXPECT_EQ(d.delay, milliseconds(delay));
    t.failed("192.0.2.1", "alice", now);
  }
  // Another user from the same address is not delayed yet (12 < 20 per address) ...
  EXPECT_EQ(t.check("192.0.2.1", "bob", now).delay, milliseconds(0));
  // ... and another address not at all.
  EXPECT_EQ(t.check("192.0.2.2", "alice", now).delay, milliseconds(0));
}

TEST(AuthThrottle, ManyUsersFromOneAddressAreDelayedThenBlocked) {
  AuthThrottle t(limits());
  std::uint64_t now = 5000;
  for (int i = 0; i < 20; ++i) {
    t.failed("2001:db8::", "user" + std::to_string(i), now);
  }
  EXPECT_EQ(t.check("2001:db8::", "fresh", now).delay, milliseconds(1000));
  for (int i = 20; i < 49; ++i) {
    t.failed("2001:db8::", "user" + std::to_string(i), now);
  }
  EXPECT_FALSE(t.check("2001:db8::", "fresh", now).blocked);
  t.failed("2001:db8::", "user49", now);
  EXPECT_TRUE(t.check("2001:db8::", "fresh", now).blocked);
  EXPECT_TRUE(t.check("2001:db8::", "fresh", now + 599000).blocked);
  // auth_block (10 min) later the address may try again, its count starting over.
  AuthThrottle::Decision after = t.check("2001:db8::", "fresh", now + 600001);
  EXPECT_FALSE(after.blocked);
  EXPECT_EQ(after.delay, milliseconds(0));
}

TEST(AuthThrottle, TheWindowForgetsAndSuccessClears) {
  AuthThrottle t(limits());
  for (int i = 0; i < 6; ++i) {
    t.failed("192.0.2.9", "carol", 0);
  }
  EXPECT_GT(t.check("192.0.2.9", "carol", 1000).delay, milliseconds(0));
  EXPECT_EQ(t.check("192.0.2.9", "carol", 600000).delay, milliseconds(0)); // window over
  for (int i = 0; i < 6; ++i) {
    t.failed("192.0.2.9", "dave", 0);
  }
  t.succeeded("192.0.2.9", "dave");
  EXPECT_EQ(t.check("192.0.2.9", "dave", 1).delay, milliseconds(0));
}

TEST(AuthThrottle, ZeroDisablesDelaysAndBlocks) {
  config::Limits l = limits();
  l.auth_failures_before_delay = 0;
  l.auth_failures_before_block = 0;
  AuthThrottle t(l);
  for (int i = 0; i < 100; ++i) {
    t.failed("192.0.2.3", "eve", 0);
  }
  AuthThrottle::Decision d = t.check("192.0.2.3", "eve", 0);
  EXPECT_FALSE(d.blocked);
  EXPECT_EQ(d.delay, milliseconds(0));
}

} // namespace
} // namespace session
