// IMAP before authentication (RFC 9051, 3501, 2595, 7888): STARTTLS answered by postern,
// capabilities rewritten wherever they appear, LOGIN/AUTHENTICATE refused before TLS where TLS is
// required, literals ({n}, {n+}) and AUTHENTICATE continuations passed through as data.
#include "proxy/protocol/line_filter.h"

#include <charconv>
#include <optional>
#include <vector>

namespace protocol {

namespace {

// The literal announced at the end of a line ("{12}" or "{12+}"), if any.
struct Literal {
  std::size_t size;
  bool synchronising;
};

std::optional<Literal> literalAtEnd(std::string_view line) {
  std::string_view text = chomp(line);
  if (!text.ends_with('}')) {
    return std::nullopt;
  }
  std::size_t open = text.rfind('{');
  if (open == std::string_view::npos) {
    return std::nullopt;
  }
  std::string_view inside = text.substr(open + 1, text.size() - open - 2);
  bool nonSync = inside.ends_with('+');
  if (nonSync) {
    inside.remove_suffix(1);
  }
  std::size_t size = 0;
  auto [end, error] = std::from_chars(inside.data(), inside.data() + inside.size(), size);
  if (inside.empty() || error != std::errc{} || end != inside.data() + inside.size()) {
    return std::nullopt;
  }
  return Literal{size, !nonSync};
}

class ImapFilter final : public LineFilter {
public:
  explicit ImapFilter(const Policy& policy) : LineFilter(policy) {}

  void fromClient(std::span<const char> data, Output& out) override {
    if (relayedFromClient(data, out)) {
      return;
    }
    if (!deferredStartTls_.empty()) {
      rejectInjection(deferredTag_, out);
      return;
    }
    client_.append(data);
    while (!relay_ && !out.close && !out.startTls && deferredStartTls_.empty()) {
      if (awaitingContinuation_ && !client_.empty()) {
        // A synchronising literal is sent only after the server's "+": the server may refuse
        // the command instead, and then these bytes would be commands postern never checked.
        out.toClient += "* BYE Literal data sent before the server's continuation\r\n";
        out.close = true;
        break;
      }
      if (clientLiteral_ > 0) {
        std::string_view raw = client_.takeRaw(clientLiteral_);
        if (raw.empty()) {
          break;
        }
        clientLiteral_ -= raw.size();
        if (!dropping_) {
          out.toBackend += raw;
        }
        continue;
      }
      auto line = client_.nextLine();
      if (!line) {
        if (client_.tooLong()) {
          out.toClient += "* BYE Line too long\r\n";
          out.close = true;
        }
        break;
      }
      if (continuing_) {
        // The rest of a command after a literal.
        if (!dropping_) {
          out.toBackend += *line;
        }
        afterCommandLine(*line);
        continue;
      }
      if (!saslTag_.empty()) {
        out.toBackend += *line; // an AUTHENTICATE response line, not a command
        continue;
      }
      command(*line, out);
    }
    client_.compact();
  }

  void fromBackend(std::span<const char> data, Output& out) override {
    if (relayedFromBackend(data, out)) {
      return;
    }
    backend_.append(data);
    while (!relay_ && !out.close && !out.startTls) {
      if (backendLiteral_ > 0) {
        std::string_view raw = backend_.takeRaw(backendLiteral_);
        if (raw.empty()) {
          break;
        }
        backendLiteral_ -= raw.size();
        out.toClient += raw;
        continue;
      }
      auto line = backend_.nextLine();
      if (!line) {
        if (backend_.tooLong()) {
          out.close = true;
        }
        break;
      }
      response(*line, out);
    }
    backend_.compact();
  }

  void tlsStarted(Output&) override {
    tls_ = true;
    deferredStartTls_.clear();
  }

private:
  enum class Kind { Auth, StartTlsForwarded, Other };
  struct Pending {
    std::string tag;
    Kind kind;
  };

  void rejectInjection(std::string_view tag, Output& out) {
    // CVE-2011-0411 class: commands pipelined after STARTTLS must never run inside TLS.
    out.toClient += std::string(tag) + " BAD Commands pipelined after STARTTLS\r\n";
    out.events.push_back({Event::StartTlsInjection});
    out.close = true;
  }

  // Literal bookkeeping after a (part of a) command line that was forwarded or dropped.
  void afterCommandLine(std::string_view line) {
    if (auto literal = literalAtEnd(line)) {
      if (!dropping_ && literal->synchronising) {
        // Counted only once the backend says "+"; a tagged reply instead ends the command.
        continuing_ = true;
        awaitingContinuation_ = true;
        awaitedLiteral_ = literal->size;
        return;
      }
      continuing_ = true;
      // A refused command's synchronising literal never comes: the client waits for "+".
      clientLiteral_ = dropping_ && literal->synchronising ? 0 : literal->size;
      if (dropping_ && literal->synchronising) {
        continuing_ = false;
        dropping_ = false;
      }
      return;
    }
    continuing_ = false;
    dropping_ = false;
  }

  void refuse(std::string_view tag, std::string_view line, const char* text, Output& out) {
    out.toClient += std::string(tag) + " " + text + "\r\n";
    dropping_ = true;
    afterCommandLine(line);
  }

  void command(std::string_view line, Output& out) {
    auto [tag, rest] = splitCommand(chomp(line));
    commandTag_ = std::string(tag);
    auto [verb, arguments] = splitCommand(rest);
    if (equalsNoCase(verb, "STARTTLS")) {
      startTls(tag, arguments, line, out);
      return;
    }
    if (equalsNoCase(verb, "LOGIN") || equalsNoCase(verb, "AUTHENTICATE")) {
      if (!policy_.allowAuth) {
        refuse(tag, line, "NO [CANNOT] Authentication is not available here", out);
        return;
      }
      if (policy_.requireTls && !tls_) {
        refuse(tag, line, "NO [PRIVACYREQUIRED] Use STARTTLS before authenticating", out);
        out.events.push_back(
            {Event::AuthRefusedPlaintext,
             mechanismLabel(equalsNoCase(verb, "LOGIN") ? verb : splitWord(arguments).first)});
        return;
      }
      out.toBackend += line;
      pending_.push_back({std::string(tag), Kind::Auth});
      if (equalsNoCase(verb, "AUTHENTICATE")) {
        saslTag_ = std::string(tag);
      }
      afterCommandLine(line);
      return;
    }
    out.toBackend += line;
    pending_.push_back({std::string(tag), Kind::Other});
    afterCommandLine(line);
  }

  void startTls(std::string_view tag, std::string_view arguments, std::string_view line,
                Output& out) {
    if (policy_.listenerTls == config::TlsMode::None) {
      out.toBackend += line; // the backend's own STARTTLS, end to end
      pending_.push_back({std::string(tag), Kind::StartTlsForwarded});
      return;
    }
    if (tls_ || !arguments.empty()) {
      out.toClient += std::string(tag) + (tls_ ? " BAD TLS is already active\r\n"
                                               : " BAD STARTTLS takes no arguments\r\n");
      out.events.push_back({Event::StartTlsRefused});
      return;
    }
    if (!client_.empty()) {
      rejectInjection(tag, out);
      return;
    }
    std::string reply = std::string(tag) + " OK Begin TLS negotiation now\r\n";
    if (pending_.empty()) {
      out.toClient += reply;
      out.startTls = true;
      out.events.push_back({Event::StartTlsOk});
      return;
    }
    // Commands sent before it are still answered in plaintext first.
    deferredStartTls_ = reply;
    deferredTag_ = std::string(tag);
  }

  void response(std::string_view line, Output& out) {
    std::string rewritten = rewriteCapabilities(line);
    out.toClient += rewritten;
    if (auto literal = literalAtEnd(line)) {
      backendLiteral_ = literal->size;
    }
    if (line.starts_with("* ")) {
      if (!greeted_) {
        greeted_ = true;
        if (startsWithNoCase(line, "* PREAUTH")) {
          authenticated_ = true; // the backend needs no login from this client
          goRelay(out);
        }
      }
      return;
    }
    if (line.starts_with("+")) {
      if (awaitingContinuation_ && saslTag_.empty()) {
        awaitingContinuation_ = false;
        clientLiteral_ = awaitedLiteral_;
      }
      return; // a continuation: for a literal or an AUTHENTICATE step
    }
    auto [tag, rest] = splitWord(chomp(line));
    auto [status, text] = splitWord(rest);
    if (awaitingContinuation_ && tag == commandTag_) {
      awaitingContinuation_ = false; // refused instead of "+": the literal never comes
      continuing_ = false;
    }
    for (auto it = pending_.begin(); it != pending_.end(); ++it) {
      if (it->tag != tag) {
        continue;
      }
      Kind kind = it->kind;
      pending_.erase(it);
      if (tag == saslTag_) {
        saslTag_.clear();
      }
      if (kind == Kind::Auth && equalsNoCase(status, "OK")) {
        out.events.push_back({Event::Authenticated});
        authenticated_ = true;
      }
      if (kind == Kind::StartTlsForwarded && equalsNoCase(status, "OK")) {
        goRelay(out); // TLS end to end with the backend
        return;
      }
      break;
    }
    if (!deferredStartTls_.empty() && pending_.empty()) {
      out.toClient += deferredStartTls_;
      out.startTls = true;
      out.events.push_back({Event::StartTlsOk});
      return;
    }
    if (authenticated_ && pending_.empty() && saslTag_.empty() && backendLiteral_ == 0) {
      goRelay(out);
    }
  }

  // SPEC §5: the capability list as this listener offers it. STARTTLS and LOGINDISABLED are
  // postern's to say on a TLS-terminating listener; AUTH= goes where login may not happen yet.
  std::string rewriteCapabilities(std::string_view line) {
    std::string_view text = chomp(line);
    std::size_t start;
    std::size_t end;
    if (startsWithNoCase(text, "* CAPABILITY ")) {
      start = 13;
      end = text.size();
    } else {
      std::size_t code = 0;
      for (; code + 12 <= text.size(); ++code) {
        if (startsWithNoCase(text.substr(code), "[CAPABILITY ")) {
          break;
        }
      }
      if (code + 12 > text.size()) {
        return std::string(line);
      }
      start = code + 12;
      end = text.find(']', start);
      if (end == std::string_view::npos) {
        return std::string(line);
      }
    }
    bool terminating = policy_.listenerTls != config::TlsMode::None;
    bool hideAuth = !policy_.allowAuth || (policy_.requireTls && !tls_);
    std::string list;
    auto add = [&](std::string_view atom) {
      if (!list.empty()) {
        list += ' ';
      }
      list += atom;
    };
    std::string_view atoms = text.substr(start, end - start);
    while (!atoms.empty()) {
      auto [atom, rest] = splitWord(atoms);
      atoms = rest;
      if (atom.empty()) {
        continue;
      }
      if (terminating && (equalsNoCase(atom, "STARTTLS") || equalsNoCase(atom, "LOGINDISABLED"))) {
        continue;
      }
      if (hideAuth && (startsWithNoCase(atom, "AUTH=") || equalsNoCase(atom, "LOGINDISABLED"))) {
        continue;
      }
      add(atom);
    }
    if (terminating && policy_.listenerTls == config::TlsMode::StartTls && !tls_) {
      add("STARTTLS");
    }
    if (hideAuth) {
      add("LOGINDISABLED");
    }
    return std::string(text.substr(0, start)) + list + std::string(text.substr(end)) + "\r\n";
  }

  std::vector<Pending> pending_;
  std::string saslTag_;
  std::string deferredStartTls_;
  std::string deferredTag_;
  std::size_t clientLiteral_ = 0;
  std::size_t awaitedLiteral_ = 0;
  bool awaitingContinuation_ = false;
  std::string commandTag_;
  std::size_t backendLiteral_ = 0;
  bool continuing_ = false;
  bool dropping_ = false;
  bool greeted_ = false;
  bool authenticated_ = false;
};

} // namespace

std::unique_ptr<Filter> makeImapFilter(const Policy& policy) {
  return std::make_unique<ImapFilter>(policy);
}

} // namespace protocol
