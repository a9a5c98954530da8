// POP3 before authentication (RFC 1939, 2449, 2595, 5034): STLS answered by postern, CAPA
// rewritten, USER/PASS/APOP/AUTH refused before TLS where TLS is required, multi-line responses
// (dot-stuffed) followed to their end, replies kept in order.
#include "proxy/protocol/line_filter.h"
#include "proxy/protocol/pop3/pop3_syntax.h"

#include <deque>

namespace protocol {

namespace {

class Pop3Filter final : public LineFilter {
public:
  explicit Pop3Filter(const Policy& policy) : LineFilter(policy) {
    pending_.push_back({Kind::Greeting, false, {}, false});
  }

  void fromClient(std::span<const char> data, Output& out) override {
    if (relayedFromClient(data, out)) {
      return;
    }
    if (startTlsWaiting_) {
      rejectInjection(out);
      return;
    }
    client_.append(data);
    processClient(out);
  }

  // The client's buffered lines, as far as they can go now.
  void processClient(Output& out) {
    while (!relay_ && !out.close && !out.startTls && !startTlsWaiting_) {
      if (sasl_ && !saslTurn_) {
        // After AUTH a line is SASL data only once the server asked for it ("+ "); until its
        // answer the next lines wait, bounded like one line. (Forwarded blindly, a line
        // pipelined after an AUTH the server refuses would run there as a command postern
        // never checked: XCLIENT, say.)
        if (!client_.empty() && client_.pending().size() > policy_.maxLineLength) {
          out.toClient += "-ERR Line too long\r\n";
          out.close = true;
        }
        break;
      }
      auto line = client_.nextLine();
      if (!line) {
        if (client_.tooLong()) {
          out.toClient += "-ERR Line too long\r\n";
          out.close = true;
        }
        break;
      }
      if (sasl_) {
        if (hasControlByte(chomp(*line))) {
          // The server waits for this response: refused here, the two sides would be out of
          // step, so the session ends.
          out.toClient += pop3::kInvalidCharacters;
          out.close = true;
          break;
        }
        out.toBackend += *line;
        saslTurn_ = false;
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
      auto line = backend_.nextLine();
      if (!line) {
        if (backend_.tooLong() && !inMultiLine_) {
          out.close = true;
        }
        if (inMultiLine_ && !backend_.empty() && backend_.tooLong()) {
          // Long body lines of a multi-line response pass through as they come.
          out.toClient += backend_.takeRaw(backend_.pending().size());
        }
        break;
      }
      response(*line, out);
    }
    backend_.compact();
    if (resumeClient_) {
      // The server answered an AUTH step: client lines held for it can go on now.
      resumeClient_ = false;
      processClient(out);
    }
  }

  void tlsStarted(Output&) override {
    tls_ = true;
    startTlsWaiting_ = false;
  }

private:
  enum class Kind { Greeting, Capa, Auth, Pass, MultiLine, StlsForwarded, Other, Local };
  struct Pending {
    Kind kind;
    bool multiLine; // a +OK to this command is followed by lines up to "."
    std::string reply;
    bool startTls;
  };

  void local(std::string text, Output& out, bool startTls = false) {
    if (pending_.size() >= kMaxPending) {
      tooManyPending(out);
      return;
    }
    if (pending_.empty()) {
      out.toClient += text;
      if (startTls) {
        out.startTls = true;
        out.events.push_back({Event::StartTlsOk});
      }
      return;
    }
    pending_.push_back({Kind::Local, false, std::move(text), startTls});
    if (startTls) {
      startTlsWaiting_ = true;
    }
  }

  void rejectInjection(Output& out) {
    // CVE-2011-0411 class: nothing pipelined after STLS may run inside TLS.
    out.toClient += "-ERR Commands pipelined after STLS\r\n";
    out.events.push_back({Event::StartTlsInjection});
    out.close = true;
  }

  void command(std::string_view line, Output& out) {
    pop3::ParsedCommand parsed = pop3::parseCommand(line);
    if (!parsed) {
      local(std::string(parsed.reply()), out); // SPEC §5.1
      return;
    }
    auto [verb, arguments] = *parsed.command;
    if (pop3::isAddressClaim(verb)) {
      // SPEC §5.1: Dovecot believes XCLIENT from a trusted address, and postern is one.
      local(std::string(pop3::kNotPermitted), out);
      return;
    }
    if (equalsNoCase(verb, "STLS")) {
      if (policy_.listenerTls == config::TlsMode::None) {
        forward(line, Kind::StlsForwarded, false, out); // the backend's own STLS, end to end
        return;
      }
      if (tls_) {
        local("-ERR Already using TLS\r\n", out);
        out.events.push_back({Event::StartTlsRefused});
      } else if (!arguments.empty()) {
        local("-ERR STLS takes no arguments\r\n", out);
        out.events.push_back({Event::StartTlsRefused});
      } else if (!client_.empty()) {
        rejectInjection(out);
      } else {
        local("+OK Begin TLS negotiation\r\n", out, true);
      }
      return;
    }
    bool isAuth = equalsNoCase(verb, "USER") || equalsNoCase(verb, "PASS") ||
                  equalsNoCase(verb, "APOP") || equalsNoCase(verb, "AUTH");
    if (isAuth && !policy_.allowAuth) {
      local("-ERR [AUTH] Authentication is not available here\r\n", out);
      return;
    }
    if (isAuth && policy_.requireTls && !tls_) {
      // "AUTH" alone lists mechanisms; everything else would send a secret in the clear.
      local("-ERR [AUTH] Plaintext authentication disallowed; use STLS first\r\n", out);
      out.events.push_back(
          {Event::AuthRefusedPlaintext,
           mechanismLabel(equalsNoCase(verb, "AUTH") ? splitWord(arguments).first : verb)});
      return;
    }
    bool multi = pop3::isMultiLine(verb, arguments);
    if (equalsNoCase(verb, "CAPA")) {
      forward(line, Kind::Capa, true, out);
    } else if (equalsNoCase(verb, "AUTH") && !multi) {
      forward(line, Kind::Auth, false, out);
      sasl_ = true;
    } else if (equalsNoCase(verb, "PASS") || equalsNoCase(verb, "APOP")) {
      forward(line, Kind::Pass, false, out);
    } else {
      forward(line, multi ? Kind::MultiLine : Kind::Other, multi, out);
    }
  }

  void tooManyPending(Output& out) {
    out.toClient += pop3::kTooManyPipelined;
    out.close = true;
  }

  void forward(std::string_view line, Kind kind, bool multiLine, Output& out) {
    if (pending_.size() >= kMaxPending) {
      tooManyPending(out);
      return;
    }
    out.toBackend += line;
    pending_.push_back({kind, multiLine, {}, false});
  }

  void response(std::string_view line, Output& out) {
    if (inMultiLine_) {
      if (pop3::isEnd(line)) {
        inMultiLine_ = false;
        if (pending_.front().kind == Kind::Capa) {
          capa_.emplace_back(line);
          rewriteCapa(out);
        } else {
          out.toClient += line;
        }
        pending_.pop_front();
        afterResponse(out);
        return;
      }
      if (pending_.front().kind == Kind::Capa) {
        capa_.emplace_back(line);
        if (capa_.size() > kMaxPending) {
          out.close = true; // an endless capability list
        }
      } else {
        out.toClient += line;
      }
      return;
    }
    if (pending_.empty()) {
      out.toClient += line;
      return;
    }
    Pending& head = pending_.front();
    bool ok = pop3::isOk(line);
    if (head.kind == Kind::Auth && pop3::isChallenge(line)) {
      out.toClient += line; // a SASL challenge; the client answers with a line of data
      saslTurn_ = true;
      resumeClient_ = true;
      return;
    }
    if (head.multiLine && ok) {
      inMultiLine_ = true;
      if (head.kind == Kind::Capa) {
        capa_.clear();
        capa_.emplace_back(line);
      } else {
        out.toClient += line;
      }
      return;
    }
    Kind kind = head.kind;
    if (kind == Kind::Greeting && ok) {
      // SPEC §5.1: response codes go wherever they stand. Dovecot greets a trusted address
      // (postern's) with "+OK [XCLIENT] ..."; that offer is between postern and the server.
      std::string rest = withoutResponseCodes(chomp(line).substr(3));
      out.toClient += rest.empty() ? "+OK\r\n" : "+OK " + rest + "\r\n";
    } else {
      out.toClient += line;
    }
    pending_.pop_front();
    if (kind == Kind::Auth) {
      sasl_ = false;
      saslTurn_ = false;
      resumeClient_ = true;
    }
    if ((kind == Kind::Auth || kind == Kind::Pass) && ok) {
      out.events.push_back({Event::Authenticated});
      authenticated_ = true;
    }
    if (kind == Kind::StlsForwarded && ok) {
      goRelay(out); // TLS end to end with the backend
      return;
    }
    afterResponse(out);
  }

  void afterResponse(Output& out) {
    while (!pending_.empty() && pending_.front().kind == Kind::Local) {
      out.toClient += pending_.front().reply;
      bool startTls = pending_.front().startTls;
      pending_.pop_front();
      if (startTls) {
        out.startTls = true;
        out.events.push_back({Event::StartTlsOk});
        return;
      }
    }
    if (authenticated_ && pending_.empty() && !sasl_) {
      goRelay(out);
    }
  }

  // SPEC §5, §5.1: STLS is postern's, XCLIENT between postern and the server; SASL and USER
  // are hidden while authentication may not happen.
  void rewriteCapa(Output& out) {
    bool hideAuth = !policy_.allowAuth || (policy_.requireTls && !tls_);
    for (std::size_t i = 0; i < capa_.size(); ++i) {
      bool end = pop3::isEnd(capa_[i]);
      if (i > 0 && !end) {
        std::string_view keyword = pop3::capabilityKeyword(capa_[i]);
        if (pop3::isServersOwn(keyword) || (hideAuth && pop3::isAuthentication(keyword))) {
          continue;
        }
      }
      if (end && policy_.listenerTls == config::TlsMode::StartTls && !tls_) {
        out.toClient += "STLS\r\n";
      }
      out.toClient += capa_[i];
    }
    capa_.clear();
  }

  std::deque<Pending> pending_;
  static constexpr std::size_t kMaxPending = 1000;
  std::vector<std::string> capa_;
  bool inMultiLine_ = false;
  bool sasl_ = false;
  bool saslTurn_ = false;     // the server asked ("+ ") for the client's next SASL line
  bool resumeClient_ = false; // an AUTH step was answered: process held client lines
  bool startTlsWaiting_ = false;
  bool authenticated_ = false;
};

} // namespace

std::unique_ptr<Filter> makePop3Filter(const Policy& policy) {
  return std::make_unique<Pop3Filter>(policy);
}

} // namespace protocol
