// The benchmark's backend: a minimal IMAP-speaking sink on one libuv loop, fast enough that it is
// never what a figure measures. It greets, answers every tagged command with `tag OK done`, sends
// N bytes on `tag DOWNLOAD N` (as one IMAP literal) and swallows the literal of `tag UPLOAD {N+}`.
//
//   sink --port 11143 [--host 127.0.0.1] [--ready-file PATH]
//
// Literals in any command are honoured, synchronising ones (`{N}`) with a `+` continuation, so a
// proxy that logs in with literals (nginx mail) is served like a client that logs in with atoms.
#include <uv.h>

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
  std::string line;                    // a command line being assembled
  std::string tag;                     // the tag of the command in progress (literals pending)
  std::size_t literalLeft = 0;         // bytes of a client literal still to swallow
  bool commandIsUpload = false;        // the command in progress is UPLOAD
  unsigned long long downloadLeft = 0; // DOWNLOAD bytes still to queue
  std::string downloadTag;             // whose OK follows the download
  bool closing = false;
  bool readingPaused = false;
};

void onClosed(uv_handle_t* handle) noexcept { delete static_cast<Session*>(handle->data); }

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

// Sends a small reply: straight to the socket when it takes it all, else queued with a copy.
void reply(Session* session, std::string_view text) {
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

void pumpDownload(Session* session);

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
    if (!handleLine(session, line)) {
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
  reply(session, "* OK sink ready\r\n");
  if (!session->closing &&
      uv_read_start(reinterpret_cast<uv_stream_t*>(&session->tcp), onAlloc, onRead) != 0) {
    closeSession(session);
  }
}

void onSignal(uv_signal_t*, int) noexcept { uv_stop(gLoop); }

void usage() {
  std::fprintf(stderr, "usage: sink --port N [--host 127.0.0.1] [--ready-file PATH]\n");
  std::exit(2);
}

} // namespace

int main(int argc, char** argv) {
  std::string host = "127.0.0.1";
  int port = 0;
  std::string readyFile;
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
  sockaddr_in address{};
  if (uv_ip4_addr(host.c_str(), port, &address) != 0) {
    std::fprintf(stderr, "sink: bad address %s\n", host.c_str());
    return 2;
  }
  uv_tcp_init(gLoop, &gServer);
  int status = uv_tcp_bind(&gServer, reinterpret_cast<const sockaddr*>(&address), 0);
  if (status == 0) {
    status = uv_listen(reinterpret_cast<uv_stream_t*>(&gServer), 4096, onConnection);
  }
  if (status != 0) {
    std::fprintf(stderr, "sink: cannot listen on %s:%d: %s\n", host.c_str(), port,
                 uv_strerror(status));
    return 1;
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
