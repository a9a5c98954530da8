// What the three login dialogues share: the policy and TLS state, the client's line reader,
// the wait for a verdict, and the SASL capture in progress.
#pragma once

#include "proxy/protocol/line_reader.h"
#include "proxy/protocol/login/login.h"

#include <memory>
#include <optional>
#include <string>

namespace protocol {

class LoginFront : public LoginDialogue {
public:
  void fromClient(std::span<const char> data, LoginOutput& out) override {
    reader_.append(data);
    run(out);
  }
  void tlsStarted(LoginOutput& out) override {
    tls_ = true;
    afterTls(out);
  }
  void rejected(LoginOutput& out) override {
    waiting_ = false;
    run(out);
  }
  void throttled(LoginOutput& out) override { refuseAttempt(throttledReply(), out); }
  void unavailable(LoginOutput& out) override { refuseAttempt(unavailableReply(), out); }
  std::string acceptedRest() override {
    waiting_ = false;
    return reader_.takeAll();
  }
  std::size_t heldFromClient() const override { return reader_.pending().size() + assembled(); }

protected:
  LoginFront(const Policy& policy, BackendOffer offer)
      : policy_(policy), offer_(std::move(offer)),
        tls_(policy.listenerTls == config::TlsMode::Implicit), reader_(policy.maxLineLength) {}

  // One complete line (CRLF included) when no SASL exchange runs.
  virtual void line(std::string_view line, LoginOutput& out) = 0;
  // Raw bytes the dialogue asked for (IMAP literals); returns false when it wants none.
  virtual bool takeRaw(LoginOutput&) { return false; }
  virtual void lineTooLong(LoginOutput& out) = 0;
  virtual std::string unavailableReply() const = 0;

  // An attempt postern answers itself; the dialogue goes on with what the client sent next.
  void refuseAttempt(std::string reply, LoginOutput& out) {
    out.toClient += reply;
    waiting_ = false;
    run(out);
  }
  virtual void afterTls(LoginOutput&) {}
  // A line answering postern's SASL challenge; bare base64 unless the protocol frames it
  // (ManageSieve's strings).
  virtual void saslLine(std::string_view line, LoginOutput& out) {
    saslStep(sasl_->respond(chomp(line)), out);
  }
  // Bytes of a command being assembled across lines (IMAP literals).
  virtual std::size_t assembled() const { return 0; }

  // Authentication is allowed now (TLS policy): STARTTLS before it where TLS is required.
  bool authAllowedNow() const { return policy_.allowAuth && (tls_ || !policy_.requireTls); }
  bool startTlsOffered() const { return policy_.listenerTls == config::TlsMode::StartTls && !tls_; }

  // Credentials complete: hand them over and wait; the consumed bytes that carried them are
  // zeroed.
  void captured(Credentials credentials, LoginOutput& out) {
    reader_.wipeConsumed();
    out.credentials = std::move(credentials);
    waiting_ = true;
    sasl_.reset();
  }

  // The protocol's replies around a SASL exchange, as whole lines (IMAP's carry the tag).
  struct SaslReplies {
    std::string challenge; // the continuation prefix: "+ " or "334 " (ManageSieve: "\"")
    std::string unsupported;
    std::string badEncoding;
    std::string malformed;
    std::string cancelled;
    std::string challengeEnd; // after the base64 (ManageSieve's closing quote)
  };
  virtual SaslReplies saslReplies() const = 0;
  // Credentials complete; a protocol adds what it knows (IMAP the tag, SMTP the EHLO name).
  virtual void saslCaptured(Credentials credentials, LoginOutput& out) {
    captured(std::move(credentials), out);
  }

  // A command's optional last word (an initial response), as startSasl() takes it.
  static std::optional<std::string_view> given(std::string_view word) {
    return word.empty() ? std::nullopt : std::optional<std::string_view>(word);
  }

  // An exchange for the mechanism `name`, with the client's initial response if it sent one.
  void startSasl(std::string_view name, std::optional<std::string_view> initial, LoginOutput& out) {
    std::optional<Mechanism> mechanism = parseMechanism(name);
    if (!mechanism || !mechanisms_.offers(*mechanism)) {
      out.toClient += saslReplies().unsupported;
      return;
    }
    sasl_ = std::make_unique<SaslCapture>(*mechanism);
    saslStep(sasl_->start(initial), out);
    reader_.wipeConsumed();
  }

  void saslStep(SaslCapture::Step result, LoginOutput& out) {
    switch (result) {
    case SaslCapture::Step::Challenge:
      out.toClient +=
          saslReplies().challenge + sasl_->challenge() + saslReplies().challengeEnd + "\r\n";
      return;
    case SaslCapture::Step::Done:
      saslCaptured(std::move(sasl_->credentials()), out);
      return;
    case SaslCapture::Step::BadEncoding:
      out.toClient += saslReplies().badEncoding;
      break;
    case SaslCapture::Step::Malformed:
      out.toClient += saslReplies().malformed;
      break;
    case SaslCapture::Step::Cancelled:
      out.toClient += saslReplies().cancelled;
      break;
    }
    sasl_.reset();
  }

  // A STARTTLS postern accepts: the go-ahead, unless bytes came pipelined after the command
  // (CVE-2011-0411 class): then the protocol's error and the session ends.
  void acceptStartTls(std::string_view injectionReply, std::string_view goAhead, LoginOutput& out) {
    if (!reader_.empty()) {
      out.toClient += injectionReply;
      out.events.push_back({Event::StartTlsInjection});
      out.close = true;
      return;
    }
    out.toClient += goAhead;
    out.events.push_back({Event::StartTlsOk});
    out.startTls = true;
  }

  void run(LoginOutput& out) {
    while (!waiting_ && !out.close && !out.quit && !out.startTls) {
      if (takeRaw(out)) {
        continue;
      }
      auto next = reader_.nextLine();
      if (!next) {
        if (reader_.tooLong()) {
          lineTooLong(out);
          out.close = true;
        }
        break;
      }
      if (sasl_) {
        saslLine(*next, out);
        reader_.wipeConsumed();
      } else {
        line(*next, out);
      }
    }
    if (!waiting_) {
      reader_.compact();
    }
  }

  Policy policy_;
  BackendOffer offer_;
  MechanismOffer mechanisms_;
  bool tls_;
  LineReader reader_;
  bool waiting_ = false;
  std::unique_ptr<SaslCapture> sasl_;
};

// A replay that reads the server line by line; `line` gets each complete line, CRLF included.
class LineReplay : public LoginReplay {
public:
  Result fromBackend(std::span<const char> data) override;
  bool credentialsSent() const override { return secretSent_; }
  ~LineReplay() override;
  LineReplay(Credentials credentials, ReplayContext context)
      : credentials_(std::move(credentials)), context_(std::move(context)) {}

protected:
  virtual Result line(std::string_view raw) = 0;

  static Result failed(std::string reason);
  static Result send(std::string text);
  // A command that carries the credentials (or starts their exchange).
  Result sendSecret(std::string text) {
    secretSent_ = true;
    return send(std::move(text));
  }
  // The server's verdict: what was collected for the client, then its last line.
  Result verdict(bool accepted, std::string_view last);
  // The answer to a server challenge: the next queued response, or the end of an error
  // challenge.
  Result nextResponse();
  // "<prefix><MECHANISM> <base64>" with an initial response, else the command alone and the
  // response queued for the server's challenge.
  Result saslCommand(std::string prefix, const char* mechanism, std::string message,
                     bool initialResponse);
  // What every protocol does alike with the server's SASL `mechanisms`: a token goes with its
  // own mechanism (or the server is unusable), a password as PLAIN when offered. nullopt: a
  // password and no PLAIN, so the protocol's own password forms come next.
  std::optional<Result> replaySasl(const std::vector<std::string>& mechanisms,
                                   const std::string& prefix, bool initialResponse);
  // The last resort for a password: the LOGIN mechanism, when offered.
  Result replayLoginMechanism(const std::vector<std::string>& mechanisms,
                              const std::string& prefix);

  // SASL names and data as the protocol writes them: ManageSieve (RFC 5804 §2.1) quotes them
  // as strings, the others send them bare.
  std::string saslString(std::string_view text) const {
    return quotedSasl_ ? "\"" + std::string(text) + "\"" : std::string(text);
  }

  Credentials credentials_;
  ReplayContext context_;
  bool quotedSasl_ = false;
  LineReader reader_{65536};
  std::vector<std::string> capabilities_;
  std::vector<std::string> responses_; // base64 responses still to send (secrets)
  std::size_t next_ = 0;
  std::string verdict_;
  bool secretSent_ = false;
};

// Case-insensitive membership of a capability word ("AUTH=PLAIN", "SASL-IR").
bool hasCapability(const std::vector<std::string>& capabilities, std::string_view name);
// The mechanisms of a "SASL ..." (POP3) or "AUTH ..." (SMTP) line among `capabilities`.
std::vector<std::string> mechanismsIn(const std::vector<std::string>& capabilities,
                                      std::string_view keyword);
bool hasMechanism(const std::vector<std::string>& mechanisms, std::string_view name);

} // namespace protocol
