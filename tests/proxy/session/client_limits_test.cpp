// Per-client-address limits: concurrency, the token bucket and its refill, and forgetting.
#include "proxy/session/client_limits.h"

#include <gtest/gtest.h>

namespace session {
namespace {

using metrics::RejectReason;

TEST(ClientLimits, ConcurrentSessionsPerAddress) {
  ClientLimits limits(2, 1000);
  EXPECT_FALSE(limits.admit("192.0.2.1", 0));
  EXPECT_FALSE(limits.admit("192.0.2.1", 0));
  EXPECT_EQ(limits.admit("192.0.2.1", 0), RejectReason::PerIpLimit);
  EXPECT_FALSE(limits.admit("192.0.2.2", 0)) << "other addresses are not affected";
  limits.leave("192.0.2.1", 0);
  EXPECT_FALSE(limits.admit("192.0.2.1", 0));
}

TEST(ClientLimits, TokenBucketAllowsOneSecondsBurstThenTheRate) {
  ClientLimits limits(1000, 5);
  for (int i = 0; i < 5; ++i) {
    EXPECT_FALSE(limits.admit("192.0.2.1", 1000)) << i;
  }
  EXPECT_EQ(limits.admit("192.0.2.1", 1000), RejectReason::RateLimit);
  EXPECT_EQ(limits.admit("192.0.2.1", 1100), RejectReason::RateLimit) << "0.5 tokens so far";
  EXPECT_FALSE(limits.admit("192.0.2.1", 1200)) << "one token after 200 ms at 5/s";
  EXPECT_EQ(limits.admit("192.0.2.1", 1200), RejectReason::RateLimit);
  for (int i = 0; i < 5; ++i) {
    EXPECT_FALSE(limits.admit("192.0.2.1", 60000)) << "refilled, but only to the burst";
  }
  EXPECT_EQ(limits.admit("192.0.2.1", 60000), RejectReason::RateLimit);
}

TEST(ClientLimits, IdleAddressesAreForgotten) {
  ClientLimits limits(10, 10);
  EXPECT_FALSE(limits.admit("192.0.2.1", 0));
  EXPECT_EQ(limits.tracked(), 1u);
  limits.leave("192.0.2.1", 5000);
  EXPECT_EQ(limits.tracked(), 0u) << "no session and a full bucket: nothing to remember";
}

} // namespace
} // namespace session
