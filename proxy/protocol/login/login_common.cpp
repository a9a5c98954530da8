// Capability arithmetic shared by the login dialogues.
#include "proxy/protocol/login/login_common.h"

#include <algorithm>

namespace protocol {

bool hasCapability(const std::vector<std::string>& capabilities, std::string_view name) {
  for (const std::string& capability : capabilities) {
    if (equalsNoCase(capability, name)) {
      return true;
    }
  }
  return false;
}

namespace {

std::vector<std::string> words(std::string_view text) {
  std::vector<std::string> out;
  while (!text.empty()) {
    auto [word, rest] = splitWord(text);
    if (!word.empty()) {
      out.emplace_back(word);
    }
    text = rest;
  }
  return out;
}

// "SASL PLAIN LOGIN" (POP3) / "AUTH PLAIN LOGIN" (SMTP); not IMAP's single "AUTH=PLAIN" atoms.
bool isMechanismLine(std::string_view line, std::string_view keyword) {
  return line.size() > keyword.size() && startsWithNoCase(line, keyword) &&
         line[keyword.size()] == ' ';
}

std::string_view mechanismKeyword(std::string_view line) {
  if (isMechanismLine(line, "SASL")) {
    return "SASL";
  }
  if (isMechanismLine(line, "AUTH")) {
    return "AUTH";
  }
  return {};
}

} // namespace

std::vector<std::string> mechanismsIn(const std::vector<std::string>& capabilities,
                                      std::string_view keyword) {
  std::vector<std::string> out;
  for (const std::string& line : capabilities) {
    if (isMechanismLine(line, keyword)) {
      for (std::string& word : words(std::string_view(line).substr(keyword.size() + 1))) {
        if (!hasMechanism(out, word)) {
          out.push_back(std::move(word));
        }
      }
    }
  }
  return out;
}

bool hasMechanism(const std::vector<std::string>& mechanisms, std::string_view name) {
  return hasCapability(mechanisms, name);
}

std::vector<std::string> commonCapabilities(const std::vector<std::vector<std::string>>& lists) {
  std::vector<std::string> common;
  if (lists.empty()) {
    return common;
  }
  for (const std::string& capability : lists.front()) {
    std::string_view keyword = mechanismKeyword(capability);
    if (!keyword.empty()) {
      if (!common.empty() && !mechanismKeyword(capability).empty() &&
          std::any_of(common.begin(), common.end(),
                      [&](const std::string& kept) { return startsWithNoCase(kept, keyword); })) {
        continue; // a second AUTH line (AUTH and AUTH=): merged below already
      }
      // Mechanisms every server offers.
      std::vector<std::string> shared = mechanismsIn(lists.front(), keyword);
      for (std::size_t i = 1; i < lists.size(); ++i) {
        std::vector<std::string> theirs = mechanismsIn(lists[i], keyword);
        std::erase_if(shared, [&](const std::string& m) { return !hasMechanism(theirs, m); });
      }
      if (!shared.empty()) {
        std::string line(keyword);
        for (const std::string& mechanism : shared) {
          line += " " + mechanism;
        }
        common.push_back(std::move(line));
      }
      continue;
    }
    bool everywhere = true;
    for (std::size_t i = 1; i < lists.size() && everywhere; ++i) {
      everywhere = hasCapability(lists[i], capability);
    }
    if (everywhere && !hasCapability(common, capability)) {
      common.push_back(capability);
    }
  }
  return common;
}

std::string MechanismOffer::list() const {
  std::string out;
  auto add = [&](const char* name) {
    if (!out.empty()) {
      out.push_back(' ');
    }
    out += name;
  };
  if (password) {
    add("PLAIN");
    add("LOGIN");
  }
  if (xoauth2) {
    add("XOAUTH2");
  }
  if (oauthbearer) {
    add("OAUTHBEARER");
  }
  return out;
}

bool MechanismOffer::offers(Mechanism mechanism) const {
  switch (mechanism) {
  case Mechanism::Plain:
  case Mechanism::Login:
    return password;
  case Mechanism::XOAuth2:
    return xoauth2;
  case Mechanism::OAuthBearer:
    return oauthbearer;
  }
  return false;
}

LoginReplay::Result LineReplay::fromBackend(std::span<const char> data) {
  reader_.append(data);
  Result result;
  while (true) {
    auto next = reader_.nextLine();
    if (!next) {
      if (reader_.tooLong()) {
        wipe(result.toBackend);
        return failed("over-long line from the server");
      }
      break;
    }
    Result step = line(*next);
    if (step.step == Step::Send) {
      result.step = Step::Send;
      result.toBackend += step.toBackend;
      wipe(step.toBackend);
      continue;
    }
    if (step.step != Step::NeedMore) {
      // A verdict or a failure ends the replay; nothing queued before it matters any more.
      wipe(result.toBackend);
      return step;
    }
  }
  reader_.compact();
  return result;
}

LoginReplay::Result LineReplay::failed(std::string reason) {
  Result result;
  result.step = Step::Failed;
  result.reason = std::move(reason);
  return result;
}

LoginReplay::Result LineReplay::send(std::string text) {
  Result result;
  result.step = Step::Send;
  result.toBackend = std::move(text);
  return result;
}

LoginReplay::Result LineReplay::verdict(bool accepted, std::string_view last) {
  Result result;
  result.step = accepted ? Step::Accepted : Step::Rejected;
  verdict_.append(last);
  result.toClient = std::move(verdict_);
  verdict_.clear();
  return result;
}

LoginReplay::Result LineReplay::nextResponse() {
  if (next_ < responses_.size()) {
    std::string response = saslString(responses_[next_]) + "\r\n";
    wipe(responses_[next_]);
    ++next_;
    return send(std::move(response));
  }
  // An error challenge (XOAUTH2, OAUTHBEARER): the client's side of it ends the exchange.
  switch (credentials_.kind) {
  case Credentials::Kind::OAuthBearer:
    return send(saslString("AQ==") + "\r\n"); // RFC 7628 §3.2.3: a dummy ^A
  case Credentials::Kind::XOAuth2:
    return send(saslString("") + "\r\n"); // an empty response
  case Credentials::Kind::Password:
    break;
  }
  return send(saslString("*") + "\r\n"); // cancel
}

LoginReplay::Result LineReplay::saslCommand(std::string prefix, const char* mechanism,
                                            std::string message, bool initialResponse) {
  std::string encoded = encodeBase64(message);
  wipe(message);
  if (initialResponse) {
    std::string command = prefix + saslString(mechanism) + " " +
                          (encoded.empty() && !quotedSasl_ ? "=" : saslString(encoded)) + "\r\n";
    wipe(encoded);
    return sendSecret(std::move(command));
  }
  responses_.push_back(std::move(encoded));
  return sendSecret(prefix + saslString(mechanism) + "\r\n");
}

std::optional<LoginReplay::Result>
LineReplay::replaySasl(const std::vector<std::string>& mechanisms, const std::string& prefix,
                       bool initialResponse) {
  switch (credentials_.kind) {
  case Credentials::Kind::XOAuth2:
    if (!hasMechanism(mechanisms, "XOAUTH2")) {
      return failed("the server does not offer XOAUTH2");
    }
    return saslCommand(prefix, "XOAUTH2", buildXOAuth2(credentials_), initialResponse);
  case Credentials::Kind::OAuthBearer:
    if (!hasMechanism(mechanisms, "OAUTHBEARER")) {
      return failed("the server does not offer OAUTHBEARER");
    }
    return saslCommand(prefix, "OAUTHBEARER",
                       buildOAuthBearer(credentials_, context_.serverHost, context_.serverPort),
                       initialResponse);
  case Credentials::Kind::Password:
    break;
  }
  if (hasMechanism(mechanisms, "PLAIN")) {
    return saslCommand(prefix, "PLAIN", buildPlain(credentials_), initialResponse);
  }
  return std::nullopt;
}

LoginReplay::Result LineReplay::replayLoginMechanism(const std::vector<std::string>& mechanisms,
                                                     const std::string& prefix) {
  if (hasMechanism(mechanisms, "LOGIN") && credentials_.authzid.empty()) {
    responses_.push_back(encodeBase64(credentials_.user));
    responses_.push_back(encodeBase64(credentials_.secret));
    return sendSecret(prefix + saslString("LOGIN") + "\r\n");
  }
  return failed("the server offers no way to log in with a password");
}

LineReplay::~LineReplay() {
  for (std::string& response : responses_) {
    wipe(response);
  }
}

} // namespace protocol
