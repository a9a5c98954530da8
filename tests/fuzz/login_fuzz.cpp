// libFuzzer target for login mode: the front dialogues under any client bytes, any policy and
// any order of verdicts; the replays under any server bytes; the SASL decoders directly.
#include "proxy/protocol/login/login.h"
#include "proxy/protocol/registry.h"
#include "tests/fuzz/reads.h"

#include <cstddef>
#include <cstdint>
#include <cstdlib>

namespace {

// Every protocol of the table, by the selector byte.
const protocol::ProtocolInfo& pick(std::uint8_t selector) {
  std::span<const protocol::ProtocolInfo> rows = protocol::protocols();
  return rows[selector % rows.size()];
}

// Reads separated by 0xFF; each starts with a byte: 0xFE TLS started, 0xFD rejected,
// 0xFC throttled, 0xFA unavailable, 0xFB accepted (ends the dialogue), else client bytes.
void front(const std::uint8_t* data, std::size_t size, std::uint8_t selector) {
  protocol::Policy policy;
  policy.listenerTls = static_cast<config::TlsMode>((selector >> 2) % 3);
  policy.requireTls = (selector & 0x10) != 0;
  policy.allowAuth = (selector & 0x20) != 0;
  policy.maxLineLength = (selector & 0x40) != 0 ? 64 : 8192;
  protocol::BackendOffer offer;
  if ((selector & 0x10) != 0) {
    offer.capabilities = {"IMAP4rev1",     "AUTH=XOAUTH2", "SASL PLAIN XOAUTH2",
                          "AUTH LOGIN",    "USER",         "STARTTLS",
                          "LOGINDISABLED", "PIPELINING",   "\"SIEVE\" \"fileinto\"",
                          "\"STARTTLS\""};
  }
  auto dialogue = pick(selector).makeLogin(policy, std::move(offer));
  protocol::LoginOutput out;
  dialogue->greet(out);
  bool waiting = false;
  fuzz::forEachRead(data, size, [&](std::span<const std::uint8_t> read) {
    if (read.empty()) {
      return true;
    }
    std::uint8_t who = read[0];
    out.reset();
    if (who == 0xFE) {
      dialogue->tlsStarted(out);
    } else if (who == 0xFD && waiting) {
      dialogue->rejected(out);
      waiting = false;
    } else if (who == 0xFC && waiting) {
      dialogue->throttled(out);
      waiting = false;
    } else if (who == 0xFA && waiting) {
      dialogue->unavailable(out);
      waiting = false;
    } else if (who == 0xFB && waiting) {
      (void)dialogue->acceptedRest();
      return false;
    } else {
      dialogue->fromClient(fuzz::chars(read.subspan(1)), out);
    }
    if (out.credentials) {
      // Credentials come only when no other attempt is outstanding.
      if (waiting) {
        std::abort();
      }
      waiting = true;
    }
    // SPEC §5.1: what a client makes the dialogue hold is bounded by max_line_length (the
    // session stops reading while credentials wait for their verdict). A literal count that
    // wraps, or a command that grows literal after literal, fails here.
    if (!waiting && !out.close && !out.quit &&
        dialogue->heldFromClient() > policy.maxLineLength + 2) {
      std::abort();
    }
    return !out.close && !out.quit;
  });
}

void replay(const std::uint8_t* data, std::size_t size, std::uint8_t selector) {
  protocol::Credentials credentials;
  credentials.kind = static_cast<protocol::Credentials::Kind>((selector >> 2) % 3);
  credentials.user = "alice";
  credentials.secret = "wonder land";
  credentials.tag = "a1";
  protocol::ReplayContext context;
  context.clientIp = "192.0.2.1";
  context.clientPort = 1;
  context.hostname = "fuzz.example";
  context.greeted = (selector & 0x10) != 0;
  auto server = pick(selector).makeReplay(std::move(credentials), std::move(context));
  auto result = server->start();
  fuzz::forEachRead(data, size, [&](std::span<const std::uint8_t> read) {
    if (result.step == protocol::LoginReplay::Step::Accepted ||
        result.step == protocol::LoginReplay::Step::Rejected ||
        result.step == protocol::LoginReplay::Step::Failed) {
      return false;
    }
    result = server->fromBackend(fuzz::chars(read));
    return true;
  });
}

void sasl(const std::uint8_t* data, std::size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  if (auto decoded = protocol::decodeBase64(text)) {
    if (protocol::encodeBase64(*decoded) != text) {
      std::abort(); // strict decoding: only canonical base64 is accepted
    }
  }
  (void)protocol::parsePlain(text);
  (void)protocol::parseXOAuth2(text);
  if (auto bearer = protocol::parseOAuthBearer(text)) {
    auto again = protocol::parseOAuthBearer(protocol::buildOAuthBearer(*bearer, "h", 1));
    if (!again || again->user != bearer->user || again->secret != bearer->secret) {
      std::abort(); // what postern builds, it parses back the same
    }
  }
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1) {
    return 0;
  }
  std::uint8_t selector = data[0];
  if ((selector & 0x80) == 0) {
    front(data + 1, size - 1, selector);
  } else if ((selector & 0x40) == 0) {
    replay(data + 1, size - 1, selector);
  } else {
    sasl(data + 1, size - 1);
  }
  return 0;
}
