// SMTP before authentication (RFC 5321, 3207, 4954, 2920): STARTTLS answered by postern, EHLO
// capabilities rewritten, AUTH and MAIL refused before TLS where TLS is required, replies kept in
// order under PIPELINING, message bodies passed through untouched.
#include "proxy/protocol/line_filter.h"
#include "proxy/protocol/smtp/smtp_syntax.h"

#include <deque>
#include <vector>

namespace protocol {

namespace {

class SmtpFilter final : public LineFilter {
public:
  // `loggedIn`: login mode handed over an authenticated session; no greeting is to come.
  SmtpFilter(const Policy& policy, bool loggedIn) : LineFilter(policy) {
    if (!loggedIn) {
      pending_.push_back({Kind::Greeting, {}, false});
    } else {
      client_.setMaxLine(smtp::kMaxAuthenticatedLine);
    }
    authenticated_ = loggedIn;
    greetedAfterTls_ = loggedIn;
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
      if (sasl_ && !saslTurn_ && !client_.empty()) {
        // After AUTH a line is SASL data only once the server asked for it (334); until its
        // reply the next lines wait. (Forwarded blindly, a line pipelined after an AUTH the
        // server refuses would run as a command there: XCLIENT from the client, say.) What
        // waits is bounded like one line (SPEC §5.1).
        if (client_.pending().size() > policy_.maxLineLength) {
          out.toClient += smtp::kLineTooLong;
          out.close = true;
        }
        break;
      }
      if (dataPending_ && !client_.empty()) {
        // RFC 2920: DATA ends a pipelined group; anything before the 354 would be read by the
        // backend as commands while postern took it for the message (a desynchronisation).
        out.toClient += "554 5.5.1 Error: data or commands sent before the 354 reply\r\n";
        out.close = true;
        break;
      }
      if (body_) {
        forwardBody(out);
        if (body_) {
          break;
        }
        continue;
      }
      auto line = client_.nextLine();
      if (!line) {
        if (client_.tooLong()) {
          out.toClient += smtp::kLineTooLong;
          out.close = true;
        }
        break;
      }
      if (sasl_) {
        if (hasControlByte(chomp(*line))) {
          // The server waits for this response; refusing it locally would leave the two
          // sides out of step, so the session ends here.
          out.toClient += smtp::kInvalidCharacters;
          out.close = true;
          break;
        }
        out.toBackend += *line; // the SASL response the server asked for, not a command
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
        if (backend_.tooLong()) {
          out.close = true;
        }
        break;
      }
      reply_.emplace_back(*line);
      if (reply_.size() > kMaxReplyLines) {
        out.close = true; // an endless multi-line reply: nothing to wait for
        break;
      }
      if (!smtp::parseReply(*line).last) {
        continue;
      }
      finishReply(out);
      reply_.clear();
    }
    backend_.compact();
    if (resumeClient_) {
      // The server answered an AUTH step: client lines held for it can go on now.
      resumeClient_ = false;
      processClient(out);
    }
  }

  void tlsStarted(Output&) override {
    // RFC 3207 §4.2: everything learned before TLS is forgotten; the client greets again.
    tls_ = true;
    needGreeting_ = true;
    startTlsWaiting_ = false;
  }

private:
  enum class Kind { Greeting, Ehlo, Helo, Auth, Mail, Data, DataEnd, Other, Local };
  struct Pending {
    Kind kind;
    std::string reply; // Local: what postern answers, in its turn
    bool startTls;     // Local: the go-ahead for STARTTLS
  };

  // Answers in the client's order: after every reply still owed by the backend.
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
    pending_.push_back({Kind::Local, std::move(text), startTls});
    if (startTls) {
      startTlsWaiting_ = true;
    }
  }

  void rejectInjection(Output& out) {
    // CVE-2011-0411: commands pipelined after STARTTLS must never run inside TLS.
    out.toClient += "554 5.5.1 Error: commands pipelined after STARTTLS\r\n";
    out.events.push_back({Event::StartTlsInjection});
    out.close = true;
  }

  void command(std::string_view line, Output& out) {
    std::optional<Command> parsed = smtp::parseCommand(line);
    if (!parsed) {
      // SPEC §5.1: "XCLIENT\vADDR=...", "AUTH\vPLAIN", "DATA\v" are one command to Postfix
      // (which splits on VT, FF and CR too) and none to a reader splitting on SP and HTAB.
      local(std::string(smtp::kInvalidCharacters), out);
      return;
    }
    auto [verb, arguments] = *parsed;
    if (equalsNoCase(verb, "STARTTLS")) {
      startTls(arguments, out);
      return;
    }
    if (needGreeting_ && !equalsNoCase(verb, "EHLO") && !equalsNoCase(verb, "HELO") &&
        !equalsNoCase(verb, "NOOP") && !equalsNoCase(verb, "QUIT")) {
      local("503 5.5.1 Error: send EHLO/HELO first\r\n", out);
      return;
    }
    if (smtp::isAddressClaim(verb)) {
      // Only postern may tell the backend who the client is.
      local(std::string(smtp::kNotPermitted), out);
      return;
    }
    if (equalsNoCase(verb, "BDAT")) {
      local("502 5.5.1 Error: BDAT is not offered here, use DATA\r\n", out);
      return;
    }
    if (equalsNoCase(verb, "AUTH")) {
      if (authenticated_) {
        local("503 5.5.1 Error: already authenticated\r\n", out);
        return;
      }
      if (!policy_.allowAuth) {
        local("503 5.5.1 Error: authentication not enabled\r\n", out);
        return;
      }
      if (policy_.requireTls && !tls_) {
        local("530 5.7.0 Must issue a STARTTLS command first\r\n", out);
        out.events.push_back(
            {Event::AuthRefusedPlaintext, mechanismLabel(splitWord(arguments).first)});
        return;
      }
      forward(line, Kind::Auth, out);
      sasl_ = true;
      return;
    }
    if (equalsNoCase(verb, "MAIL") && policy_.requireTls && !tls_) {
      local("530 5.7.0 Must issue a STARTTLS command first\r\n", out);
      return;
    }
    if (equalsNoCase(verb, "EHLO") || equalsNoCase(verb, "HELO")) {
      needGreeting_ = false;
      forward(line, equalsNoCase(verb, "EHLO") ? Kind::Ehlo : Kind::Helo, out);
      return;
    }
    forward(line,
            equalsNoCase(verb, "DATA")   ? Kind::Data
            : equalsNoCase(verb, "MAIL") ? Kind::Mail
                                         : Kind::Other,
            out);
  }

  void startTls(std::string_view arguments, Output& out) {
    if (policy_.listenerTls == config::TlsMode::None) {
      // Not offered on a plaintext listener: TLS end to end would hide the dialogue from
      // postern, and with it the XCLIENT/XFORWARD refusal a backend trusting postern relies on.
      local("502 5.5.1 Error: STARTTLS is not offered here\r\n", out);
      out.events.push_back({Event::StartTlsRefused});
      return;
    }
    if (tls_) {
      local("503 5.5.1 Error: TLS already active\r\n", out);
      out.events.push_back({Event::StartTlsRefused});
      return;
    }
    if (!arguments.empty()) {
      local("501 5.5.4 Syntax: STARTTLS\r\n", out);
      out.events.push_back({Event::StartTlsRefused});
      return;
    }
    if (!client_.empty()) {
      rejectInjection(out);
      return;
    }
    local("220 2.0.0 Ready to start TLS\r\n", out, true);
  }

  void forward(std::string_view line, Kind kind, Output& out) {
    if (pending_.size() >= kMaxPending) {
      tooManyPending(out);
      return;
    }
    out.toBackend += line;
    pending_.push_back({kind, {}, false});
    if (kind == Kind::Data) {
      dataPending_ = true;
    }
  }

  void tooManyPending(Output& out) {
    out.toClient += smtp::kTooManyPipelined;
    out.close = true;
  }

  // The body after 354 goes through untouched until the lone "." line (CRLF.CRLF).
  // A bare LF is refused (SMTP smuggling, CVE-2023-51764 class): a backend that took "\n.\n"
  // for the end of the message would read the rest as commands while postern still took it
  // for the message. A bare CR likewise (RFC 5321 §2.3.8): Postfix before 3.9 drops the CRs
  // before an LF, so ".\r\r\n" ends its message, and what follows would run as commands.
  void forwardBody(Output& out) {
    static constexpr std::string_view kEnd = "\r\n.\r\n";
    std::string_view data = client_.pending();
    std::size_t i = 0;
    for (; i < data.size() && bodyMatch_ < kEnd.size(); ++i) {
      char c = data[i];
      if (c == '\n' && !bodyCr_) {
        out.toBackend += client_.takeRaw(i);
        out.toClient += "554 5.5.2 Error: bare <LF> received\r\n";
        out.close = true;
        return;
      }
      if (bodyCr_ && c != '\n') {
        out.toBackend += client_.takeRaw(i);
        out.toClient += "554 5.5.2 Error: bare <CR> received\r\n";
        out.close = true;
        return;
      }
      bodyCr_ = c == '\r';
      if (c == kEnd[bodyMatch_]) {
        ++bodyMatch_;
      } else {
        bodyMatch_ = c == '\r' ? 1 : 0;
      }
    }
    out.toBackend += client_.takeRaw(i);
    if (bodyMatch_ == kEnd.size()) {
      body_ = false;
      bodyMatch_ = 0;
      bodyCr_ = false;
    }
  }

  void finishReply(Output& out) {
    if (pending_.empty()) {
      appendReply(out); // unsolicited (a 421 before closing, say)
      return;
    }
    Pending& head = pending_.front();
    // reply_ may be rewritten below
    const std::string code(smtp::parseReply(reply_.front()).code);
    switch (head.kind) {
    case Kind::Ehlo:
      if (code == "250") {
        rewriteEhlo();
      }
      appendReply(out);
      pending_.pop_front();
      if (tls_ && code == "250") {
        greetedAfterTls_ = true;
      }
      break;
    case Kind::Auth:
      appendReply(out);
      resumeClient_ = true;
      if (code == "334") {
        saslTurn_ = true; // the exchange goes on; the client's next line is SASL data
        return;
      }
      sasl_ = false;
      saslTurn_ = false;
      pending_.pop_front();
      if (code == "235") {
        out.events.push_back({Event::Authenticated});
        authenticated_ = true;
        // SPEC §5.1: still parsed, but lines up to 64 KiB now.
        client_.setMaxLine(smtp::kMaxAuthenticatedLine);
      }
      break;
    case Kind::Data:
      appendReply(out);
      dataPending_ = false;
      if (code == "354") {
        head.kind = Kind::DataEnd;
        body_ = true;
        bodyMatch_ = 2; // the DATA line's CRLF counts: a body of just "." ends at once
        bodyCr_ = false;
        return;
      }
      pending_.pop_front();
      break;
    case Kind::Mail:
      appendReply(out);
      pending_.pop_front();
      if (code == "250") {
        out.events.push_back({Event::MailAccepted});
      }
      break;
    default:
      appendReply(out);
      pending_.pop_front();
      break;
    }
    // SMTP is parsed for the whole session (message bodies pass untouched): a backend that
    // trusts postern's address for XCLIENT must never see one a client wrote.
    flushLocal(out);
  }

  void flushLocal(Output& out) {
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
  }

  void appendReply(Output& out) {
    for (const std::string& line : reply_) {
      out.toClient += line;
    }
  }

  // SPEC §5: STARTTLS is postern's (added before TLS on a starttls listener, never the
  // backend's); AUTH goes where authentication may not happen yet; XCLIENT/XFORWARD are between
  // postern and the backend; CHUNKING/BINARYMIME would hide commands inside BDAT chunks.
  void rewriteEhlo() {
    bool hideAuth = !policy_.allowAuth || (policy_.requireTls && !tls_);
    std::vector<std::string> kept;
    kept.push_back(std::string(chomp(reply_.front())));
    for (std::size_t i = 1; i < reply_.size(); ++i) {
      std::string_view keyword = smtp::extensionKeyword(reply_[i]);
      if (!smtp::isServersOwn(keyword) && !(hideAuth && smtp::isAuthentication(keyword))) {
        kept.emplace_back(chomp(reply_[i]));
      }
    }
    if (policy_.listenerTls == config::TlsMode::StartTls && !tls_) {
      kept.push_back("250 STARTTLS");
    }
    reply_.clear();
    for (std::size_t i = 0; i < kept.size(); ++i) {
      std::string line = kept[i];
      if (line.size() >= 4) {
        line[3] = i + 1 < kept.size() ? '-' : ' ';
      } else {
        line += i + 1 < kept.size() ? "-" : " ";
      }
      reply_.push_back(line + "\r\n");
    }
  }

  std::deque<Pending> pending_;
  std::vector<std::string> reply_;
  static constexpr std::size_t kMaxPending = 1000;
  static constexpr std::size_t kMaxReplyLines = 1000;
  bool sasl_ = false;
  bool saslTurn_ = false;     // the server asked (334) for the client's next SASL line
  bool resumeClient_ = false; // an AUTH step was answered: process held client lines
  bool body_ = false;
  bool bodyCr_ = false;
  bool dataPending_ = false;
  std::size_t bodyMatch_ = 0;
  bool needGreeting_ = false;
  bool greetedAfterTls_ = false;
  bool startTlsWaiting_ = false;
  bool authenticated_ = false;
};

} // namespace

std::unique_ptr<Filter> makeSmtpFilterAfterLogin(const Policy& policy) {
  return std::make_unique<SmtpFilter>(policy, true);
}

std::unique_ptr<Filter> makeSmtpFilter(const Policy& policy) {
  return std::make_unique<SmtpFilter>(policy, false);
}

} // namespace protocol
