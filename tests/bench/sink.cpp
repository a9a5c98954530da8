// The benchmark's backend: a minimal IMAP-speaking sink on one libuv loop, fast enough that it is
// never what a figure measures. It greets, answers every tagged command with `tag OK done`, sends
// N bytes on `tag DOWNLOAD N` (as one IMAP literal) and swallows the literal of `tag UPLOAD {N+}`.
//
//   sink --port 11143 [--host 127.0.0.1] [--ready-file PATH]
//
// Literals in any command are honoured, synchronising ones (`{N}`) with a `+` continuation, so a
// proxy that logs in with literals (nginx mail) is served like a client that logs in with atoms.
//
// Built with BENCH_TLS it is `ceiling`: the same dialogue with TLS terminated in the same process
// (OpenSSL through memory BIOs, configured as postern configures it), the in-process ceiling a
// proxy's figures are compared with (issue 18):
//
//   ceiling --port 11993 --starttls-port 11144 --cert C.pem --key C.key [--cert .. --key ..]
//
// `--port` is implicit TLS (greeting after the handshake), `--starttls-port` greets in plaintext
// and answers `tag STARTTLS`. Each `--cert`/`--key` pair adds a key type (ECDSA, RSA); OpenSSL
// picks by the client's signature algorithms.
#include <uv.h>

#ifdef BENCH_TLS
#include <openssl/err.h>
#include <openssl/ssl.h>

#include <vector>
#endif

#include <algorithm>
#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>

namespace {

constexpr std::size_t kReadBufferSize = 256 * 1024;
constexpr std::size_t kDownloadChunk = 256 * 1024;
constexpr std::size_t kMaxQueued = 1024 * 1024; // bytes handed to libuv before waiting
constexpr std::size_t kMaxLine = 64 * 1024;

char gReadBuffer[kReadBufferSize];
char gPayload[kDownloadChunk]; // what DOWNLOAD sends, over and over
bool gReadBufferInUse = false;
uv_loop_t* gLoop = nullptr;
uv_tcp_t gServer;
#ifdef BENCH_TLS
uv_tcp_t gStarttlsServer;
#endif
uv_signal_t gSigterm;
uv_signal_t gSigint;
unsigned long gSessions = 0;

// A write whose bytes live in the same allocation, for replies the socket did not take at once.
struct OwnedWrite {
  uv_write_t request;
  std::size_t size;
  char* bytes() { return reinterpret_cast<char*>(this + 1); }
};

struct Session {
  uv_tcp_t tcp;
#ifdef BENCH_TLS
  SSL* ssl = nullptr; // from the handshake (implicit) or STARTTLS on
  BIO* in = nullptr;  // ciphertext from the socket, read by OpenSSL
  BIO* out = nullptr; // ciphertext from OpenSSL, for the socket
  bool secured = false;
  bool implicit = false;
#endif
  std::string line;                    // a command line being assembled
  std::string tag;                     // the tag of the command in progress (literals pending)
  std::size_t literalLeft = 0;         // bytes of a client literal still to swallow
  bool commandIsUpload = false;        // the command in progress is UPLOAD
  unsigned long long downloadLeft = 0; // DOWNLOAD bytes still to queue
  std::string downloadTag;             // whose OK follows the download
  bool closing = false;
  bool readingPaused = false;
};

void onClosed(uv_handle_t* handle) noexcept {
  auto* session = static_cast<Session*>(handle->data);
#ifdef BENCH_TLS
  if (session->ssl != nullptr) {
    SSL_free(session->ssl); // frees both BIOs
  }
#endif
  delete session;
}

void closeSession(Session* session) {
  if (session->closing) {
    return;
  }
  session->closing = true;
  uv_close(reinterpret_cast<uv_handle_t*>(&session->tcp), onClosed);
}

void onOwnedWriteDone(uv_write_t* request, int) noexcept {
  auto* write = reinterpret_cast<OwnedWrite*>(request);
  ::operator delete(write);
}

// Sends bytes: straight to the socket when it takes them all, else queued with a copy.
void sendRaw(Session* session, std::string_view text) {
  if (session->closing) {
    return;
  }
  auto* stream = reinterpret_cast<uv_stream_t*>(&session->tcp);
  if (uv_stream_get_write_queue_size(stream) == 0) {
    uv_buf_t buffer = uv_buf_init(const_cast<char*>(text.data()), text.size());
    int written = uv_try_write(stream, &buffer, 1);
    if (written == static_cast<int>(text.size())) {
      return;
    }
    if (written < 0 && written != UV_EAGAIN) {
      closeSession(session);
      return;
    }
    if (written > 0) {
      text.remove_prefix(static_cast<std::size_t>(written));
    }
  }
  void* memory = ::operator new(sizeof(OwnedWrite) + text.size());
  auto* write = new (memory) OwnedWrite{};
  write->size = text.size();
  std::memcpy(write->bytes(), text.data(), text.size());
  uv_buf_t buffer = uv_buf_init(write->bytes(), write->size);
  if (uv_write(&write->request, stream, &buffer, 1, onOwnedWriteDone) != 0) {
    ::operator delete(write);
    closeSession(session);
  }
}

#ifdef BENCH_TLS
SSL_CTX* gTls = nullptr;
char gPlain[64 * 1024]; // decrypted bytes, handed to consume()

// What OpenSSL produced goes to the socket.
void flushTls(Session* session) {
  char buffer[32 * 1024];
  int n = 0;
  while ((n = BIO_read(session->out, buffer, sizeof buffer)) > 0) {
    sendRaw(session, std::string_view(buffer, static_cast<std::size_t>(n)));
  }
}
#endif

// A reply in the session's current form: plaintext, or records once TLS is on.
void reply(Session* session, std::string_view text) {
#ifdef BENCH_TLS
  if (session->ssl != nullptr) {
    if (session->closing) {
      return;
    }
    if (SSL_write(session->ssl, text.data(), static_cast<int>(text.size())) <= 0) {
      closeSession(session);
      return;
    }
    flushTls(session);
    return;
  }
#endif
  sendRaw(session, text);
}

void pumpDownload(Session* session);
void resumeReading(Session* session);

void onPayloadWriteDone(uv_write_t* request, int status) noexcept {
  auto* session = static_cast<Session*>(request->data);
  delete request;
  if (status != 0 || session->closing) {
    return;
  }
  pumpDownload(session);
}

void resumeReading(Session* session);

// Queues download bytes from the static payload while libuv holds less than kMaxQueued; the
// write callbacks call again, so the queue refills as the socket drains.
void pumpDownload(Session* session) {
  auto* stream = reinterpret_cast<uv_stream_t*>(&session->tcp);
#ifdef BENCH_TLS
  if (session->ssl != nullptr) {
    // Encrypted 64 KiB at a time; a marker write after each batch calls back here.
    while (session->downloadLeft > 0 && uv_stream_get_write_queue_size(stream) < kMaxQueued) {
      std::size_t n =
          static_cast<std::size_t>(std::min<unsigned long long>(session->downloadLeft, 64 * 1024));
      if (SSL_write(session->ssl, gPayload, static_cast<int>(n)) <= 0) {
        closeSession(session);
        return;
      }
      flushTls(session);
      session->downloadLeft -= n;
    }
    if (session->downloadLeft == 0) {
      reply(session, "\r\n" + session->downloadTag + " OK done\r\n");
      resumeReading(session);
      return;
    }
    auto* request = new uv_write_t;
    request->data = session;
    uv_buf_t empty = uv_buf_init(gPayload, 0);
    if (uv_write(request, stream, &empty, 1, onPayloadWriteDone) != 0) {
      delete request;
      closeSession(session);
    }
    return;
  }
#endif
  while (session->downloadLeft > 0 && uv_stream_get_write_queue_size(stream) < kMaxQueued) {
    std::size_t n = static_cast<std::size_t>(
        std::min<unsigned long long>(session->downloadLeft, kDownloadChunk));
    auto* request = new uv_write_t;
    request->data = session;
    uv_buf_t buffer = uv_buf_init(gPayload, n);
    if (uv_write(request, stream, &buffer, 1, onPayloadWriteDone) != 0) {
      delete request;
      closeSession(session);
      return;
    }
    session->downloadLeft -= n;
    if (session->downloadLeft == 0) {
      std::string done = "\r\n" + session->downloadTag + " OK done\r\n";
      reply(session, done);
      resumeReading(session);
      return;
    }
  }
}

// Parses `{N}` or `{N+}` at the end of a line. Returns false when there is none.
bool literalAtEnd(std::string_view line, std::size_t& size, bool& synchronising) {
  if (line.size() < 3 || line.back() != '}') {
    return false;
  }
  std::size_t open = line.rfind('{');
  if (open == std::string_view::npos) {
    return false;
  }
  std::string_view inside = line.substr(open + 1, line.size() - open - 2);
  synchronising = true;
  if (!inside.empty() && inside.back() == '+') {
    synchronising = false;
    inside.remove_suffix(1);
  }
  auto result = std::from_chars(inside.data(), inside.data() + inside.size(), size);
  return result.ec == std::errc() && result.ptr == inside.data() + inside.size();
}

std::string_view wordAt(std::string_view line, std::size_t index) {
  std::size_t start = 0;
  for (std::size_t i = 0;; ++i) {
    while (start < line.size() && line[start] == ' ') {
      ++start;
    }
    std::size_t end = line.find(' ', start);
    if (end == std::string_view::npos) {
      end = line.size();
    }
    if (i == index) {
      return line.substr(start, end - start);
    }
    if (end == line.size()) {
      return {};
    }
    start = end;
  }
}

bool equalsIgnoringCase(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return (x | 0x20) == (y | 0x20);
         });
}

#ifdef BENCH_TLS
void startTls(Session* session) {
  session->ssl = SSL_new(gTls);
  session->in = BIO_new(BIO_s_mem());
  session->out = BIO_new(BIO_s_mem());
  BIO_set_mem_eof_return(session->in, -1);
  SSL_set_bio(session->ssl, session->in, session->out);
  SSL_set_accept_state(session->ssl);
}

void consume(Session* session, const char* data, std::size_t size);

// Runs OpenSSL over what arrived: the handshake, then decrypted bytes into the dialogue.
void driveTls(Session* session) {
  if (!session->secured) {
    int result = SSL_do_handshake(session->ssl);
    flushTls(session);
    if (result != 1) {
      if (SSL_get_error(session->ssl, result) != SSL_ERROR_WANT_READ) {
        closeSession(session);
      }
      return;
    }
    session->secured = true;
    if (session->implicit) {
      reply(session, "* OK sink ready\r\n");
    }
  }
  while (!session->closing && !session->readingPaused) {
    int n = SSL_read(session->ssl, gPlain, sizeof gPlain);
    if (n <= 0) {
      int error = SSL_get_error(session->ssl, n);
      flushTls(session); // (post-handshake messages)
      if (error != SSL_ERROR_WANT_READ) {
        closeSession(session);
      }
      return;
    }
    consume(session, gPlain, static_cast<std::size_t>(n));
  }
}
#endif

// One complete line (without CRLF). Returns false when the session was closed.
bool handleLine(Session* session, std::string_view line) {
  if (session->tag.empty()) {
    session->tag = std::string(wordAt(line, 0));
    if (session->tag.empty()) {
      session->tag = "*";
    }
    session->commandIsUpload = equalsIgnoringCase(wordAt(line, 1), "UPLOAD");
  }
  std::size_t literal = 0;
  bool synchronising = false;
  if (literalAtEnd(line, literal, synchronising)) {
    session->literalLeft = literal;
    if (synchronising) {
      reply(session, "+ go ahead\r\n");
    }
    return !session->closing;
  }
  // The command is complete.
  std::string tag;
  tag.swap(session->tag);
  std::string_view verb = wordAt(line, 1);
  if (!session->commandIsUpload && equalsIgnoringCase(verb, "DOWNLOAD")) {
    unsigned long long size = 0;
    std::string_view argument = wordAt(line, 2);
    std::from_chars(argument.data(), argument.data() + argument.size(), size);
    std::string head = "* BYTES {" + std::to_string(size) + "}\r\n";
    reply(session, head);
    session->downloadTag = tag;
    session->downloadLeft = size;
    if (size == 0) {
      reply(session, "\r\n" + tag + " OK done\r\n");
      return !session->closing;
    }
    // Further commands wait until the download is queued, so replies stay in order.
    uv_read_stop(reinterpret_cast<uv_stream_t*>(&session->tcp));
    session->readingPaused = true;
    return false;
  }
#ifdef BENCH_TLS
  if (!session->commandIsUpload && equalsIgnoringCase(verb, "STARTTLS") &&
      session->ssl == nullptr) {
    sendRaw(session, tag + " OK begin TLS now\r\n");
    startTls(session);
    return false; // consume() hands the rest of the read to TLS
  }
#endif
  if (!session->commandIsUpload && equalsIgnoringCase(verb, "LOGOUT")) {
    reply(session, "* BYE sink closing\r\n" + tag + " OK done\r\n");
    closeSession(session);
    return false;
  }
  session->commandIsUpload = false;
  reply(session, tag + " OK done\r\n");
  return !session->closing;
}

// Consumes bytes: literals are counted and dropped, lines are assembled and answered.
void consume(Session* session, const char* data, std::size_t size) {
  while (size > 0 && !session->closing && !session->readingPaused) {
    if (session->literalLeft > 0) {
      std::size_t n = std::min(size, session->literalLeft);
      session->literalLeft -= n;
      data += n;
      size -= n;
      // The rest of the command line follows the literal.
      continue;
    }
    const char* newline = static_cast<const char*>(std::memchr(data, '\n', size));
    if (newline == nullptr) {
      session->line.append(data, size);
      if (session->line.size() > kMaxLine) {
        closeSession(session);
      }
      return;
    }
    std::size_t n = static_cast<std::size_t>(newline - data);
    std::string owned;
    std::string_view line(data, n);
    if (!session->line.empty()) {
      session->line.append(data, n);
      owned.swap(session->line);
      line = owned;
    }
    if (!line.empty() && line.back() == '\r') {
      line.remove_suffix(1);
    }
    data = newline + 1;
    size -= n + 1;
#ifdef BENCH_TLS
    bool plain = session->ssl == nullptr;
#endif
    if (!handleLine(session, line)) {
#ifdef BENCH_TLS
      if (plain && session->ssl != nullptr) {
        // STARTTLS: what followed the command is the client's first TLS bytes.
        BIO_write(session->in, data, static_cast<int>(size));
        driveTls(session);
        return;
      }
#endif
      if (!session->closing && size > 0) {
        // Pipelined bytes behind a download: keep them for when reading resumes.
        session->line.assign(data, size);
      }
      if (!session->closing && session->downloadLeft > 0) {
        pumpDownload(session);
      }
      return;
    }
  }
}

void onAlloc(uv_handle_t*, std::size_t, uv_buf_t* buffer) noexcept {
  if (gReadBufferInUse) {
    *buffer = uv_buf_init(nullptr, 0);
    return;
  }
  gReadBufferInUse = true;
  *buffer = uv_buf_init(gReadBuffer, kReadBufferSize);
}

void onRead(uv_stream_t* stream, ssize_t nread, const uv_buf_t* buffer) noexcept {
  if (buffer->base == gReadBuffer) {
    gReadBufferInUse = false;
  }
  auto* session = static_cast<Session*>(stream->data);
  if (nread == 0) {
    return;
  }
  if (nread < 0) {
    closeSession(session);
    return;
  }
#ifdef BENCH_TLS
  if (session->ssl != nullptr) {
    BIO_write(session->in, buffer->base, static_cast<int>(nread));
    driveTls(session);
    return;
  }
#endif
  consume(session, buffer->base, static_cast<std::size_t>(nread));
}

void resumeReading(Session* session) {
  if (!session->readingPaused || session->closing) {
    return;
  }
  session->readingPaused = false;
  if (!session->line.empty()) {
    std::string held;
    held.swap(session->line);
    consume(session, held.data(), held.size());
    if (session->closing || session->readingPaused) {
      return;
    }
  }
#ifdef BENCH_TLS
  if (session->ssl != nullptr) {
    driveTls(session); // records OpenSSL already holds
    if (session->closing || session->readingPaused) {
      return;
    }
  }
#endif
  if (uv_read_start(reinterpret_cast<uv_stream_t*>(&session->tcp), onAlloc, onRead) != 0) {
    closeSession(session);
  }
}

void onConnection(uv_stream_t* server, int status) noexcept {
  if (status != 0) {
    return;
  }
  auto* session = new Session;
  uv_tcp_init(gLoop, &session->tcp);
  session->tcp.data = session;
  if (uv_accept(server, reinterpret_cast<uv_stream_t*>(&session->tcp)) != 0) {
    closeSession(session);
    return;
  }
  ++gSessions;
  uv_tcp_nodelay(&session->tcp, 1);
#ifdef BENCH_TLS
  if (server == reinterpret_cast<uv_stream_t*>(&gServer)) {
    session->implicit = true; // the greeting follows the handshake
    startTls(session);
  } else {
    reply(session, "* OK sink ready\r\n");
  }
#else
  reply(session, "* OK sink ready\r\n");
#endif
  if (!session->closing &&
      uv_read_start(reinterpret_cast<uv_stream_t*>(&session->tcp), onAlloc, onRead) != 0) {
    closeSession(session);
  }
}

void onSignal(uv_signal_t*, int) noexcept { uv_stop(gLoop); }

void usage() {
#ifdef BENCH_TLS
  std::fprintf(stderr, "usage: ceiling --port N --starttls-port N --cert PEM --key PEM [--cert "
                       "PEM --key PEM] [--host 127.0.0.1] [--ready-file PATH]\n");
#else
  std::fprintf(stderr, "usage: sink --port N [--host 127.0.0.1] [--ready-file PATH]\n");
#endif
  std::exit(2);
}

int listenOn(uv_tcp_t* server, const std::string& host, int port) {
  sockaddr_in address{};
  if (uv_ip4_addr(host.c_str(), port, &address) != 0) {
    std::fprintf(stderr, "sink: bad address %s\n", host.c_str());
    return 2;
  }
  uv_tcp_init(gLoop, server);
  int status = uv_tcp_bind(server, reinterpret_cast<const sockaddr*>(&address), 0);
  if (status == 0) {
    status = uv_listen(reinterpret_cast<uv_stream_t*>(server), 4096, onConnection);
  }
  if (status != 0) {
    std::fprintf(stderr, "sink: cannot listen on %s:%d: %s\n", host.c_str(), port,
                 uv_strerror(status));
    return 1;
  }
  return 0;
}

} // namespace

int main(int argc, char** argv) {
  std::string host = "127.0.0.1";
  int port = 0;
  std::string readyFile;
#ifdef BENCH_TLS
  int starttlsPort = 0;
  std::vector<std::string> certs;
  std::vector<std::string> keys;
#endif
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    if (i + 1 >= argc) {
      usage();
    }
    if (arg == "--port") {
      port = std::atoi(argv[++i]);
    } else if (arg == "--host") {
      host = argv[++i];
    } else if (arg == "--ready-file") {
      readyFile = argv[++i];
#ifdef BENCH_TLS
    } else if (arg == "--starttls-port") {
      starttlsPort = std::atoi(argv[++i]);
    } else if (arg == "--cert") {
      certs.push_back(argv[++i]);
    } else if (arg == "--key") {
      keys.push_back(argv[++i]);
#endif
    } else {
      usage();
    }
  }
  if (port <= 0) {
    usage();
  }
  // A recognisable pattern without line ends, so a stray parse of payload fails loudly.
  for (std::size_t i = 0; i < kDownloadChunk; ++i) {
    gPayload[i] = static_cast<char>('a' + i % 26);
  }
  gLoop = uv_default_loop();
#ifdef BENCH_TLS
  if (certs.empty() || certs.size() != keys.size() || starttlsPort <= 0) {
    usage();
  }
  // As postern's tls/context.cpp sets up a server context: the same options, one ticket, a
  // server-side session cache, both key types.
  gTls = SSL_CTX_new(TLS_server_method());
  SSL_CTX_set_min_proto_version(gTls, TLS1_2_VERSION);
  SSL_CTX_set_options(gTls, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION |
                                SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_PRIORITIZE_CHACHA);
  SSL_CTX_set_mode(gTls, SSL_MODE_RELEASE_BUFFERS);
  SSL_CTX_set_num_tickets(gTls, 1);
  SSL_CTX_set_session_cache_mode(gTls, SSL_SESS_CACHE_SERVER);
  for (std::size_t i = 0; i < certs.size(); ++i) {
    if (SSL_CTX_use_certificate_chain_file(gTls, certs[i].c_str()) != 1 ||
        SSL_CTX_use_PrivateKey_file(gTls, keys[i].c_str(), SSL_FILETYPE_PEM) != 1) {
      std::fprintf(stderr, "ceiling: cannot load %s / %s\n", certs[i].c_str(), keys[i].c_str());
      return 1;
    }
  }
  if (int status = listenOn(&gStarttlsServer, host, starttlsPort); status != 0) {
    return status;
  }
#endif
  if (int status = listenOn(&gServer, host, port); status != 0) {
    return status;
  }
  uv_signal_init(gLoop, &gSigterm);
  uv_signal_start(&gSigterm, onSignal, SIGTERM);
  uv_signal_init(gLoop, &gSigint);
  uv_signal_start(&gSigint, onSignal, SIGINT);
  signal(SIGPIPE, SIG_IGN);
  if (!readyFile.empty()) {
    if (FILE* file = std::fopen(readyFile.c_str(), "w")) {
      std::fprintf(file, "%d\n", port);
      std::fclose(file);
    }
  }
  uv_run(gLoop, UV_RUN_DEFAULT);
  std::fprintf(stderr, "sink: %lu sessions served\n", gSessions);
  return 0;
}
