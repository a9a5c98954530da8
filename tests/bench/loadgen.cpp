// The benchmark's load generator: IMAP clients over TLS (or plaintext) on one libuv loop, driven by
// OpenSSL through memory BIOs, bounded by time and by count, printing one JSON line per run.
//
// Modes (see tests/bench/README.md for what each figure means):
//   handshake  N concurrent connections: full TLS 1.3 handshake, greeting, close; setups per second
//   starttls   plaintext greeting, `a STARTTLS`, handshake, `b NOOP`, close; upgrades per second
//   bulk       one TLS session moving a large volume up or down; MB/s
//   latency    a few sessions sending `NOOP` at a fixed rate; per-request round trip p50/p99
//   setup      one session at a time: connect, handshake, greeting; p50/p99 of that
//   idle       K sessions opened and held idle; resident memory of the watched processes
//
// `--watch NAME=PID` samples the CPU time (utime+stime of the process tree) and resident memory of
// PID and its descendants at the start and end of the measured window; a watch named `proxy` is
// the one rates are divided by.
#include <uv.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <dirent.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

namespace {

// ---------------------------------------------------------------------------------------------
// Options

enum class Mode { Handshake, Starttls, Bulk, Latency, Setup, Idle };

struct Watch {
  std::string name;
  int pid = 0;
};

struct Options {
  Mode mode = Mode::Handshake;
  std::string modeName = "handshake";
  std::string host = "127.0.0.1";
  int port = 0;
  bool tls = true;                // false: plaintext (the direct baseline, or a plain port)
  std::string sni = "bench.test"; // empty: no SNI
  std::string sigalgs;            // ecdsa | rsa | "" (OpenSSL's default list)
  std::string ciphersuites = "TLS_AES_256_GCM_SHA384";
  std::string groups = "X25519";
  int concurrency = 32;           // handshake, starttls: sessions in flight; idle: opening at once
  double duration = 5;            // seconds of load (0 = bounded by count only)
  long count = 0;                 // sessions (handshake, starttls, setup) or requests (latency)
  double rate = 1000;             // latency: requests per second over all sessions
  int baselinePort = 0;           // latency: also time the same requests straight to this port
  int sessions = 1;               // latency, bulk
  std::string direction = "down"; // bulk: up | down
  unsigned long long chunk = 32ull << 20; // bulk: bytes per UPLOAD/DOWNLOAD command
  int login = -1;                         // -1: the mode's default
  int idle = 1000;                        // idle: sessions to hold
  double hold = 0;         // idle: seconds to hold after measuring (SIGINT/SIGTERM end it)
  double settle = 1.0;     // idle: seconds between the last open and the memory sample
  double gapMs = 2;        // setup: pause between sessions
  double stepTimeout = 10; // seconds a session may wait for any one answer
  std::string label;
  std::string readyFile; // idle: written once the sessions are open and measured
  std::vector<Watch> watches;
};

Options gOptions;

[[noreturn]] void usage(const char* problem) {
  if (problem != nullptr) {
    std::fprintf(stderr, "loadgen: %s\n", problem);
  }
  std::fprintf(
      stderr,
      "usage: loadgen --mode handshake|starttls|bulk|latency|setup|idle --port N [options]\n"
      "  --host IP            target (127.0.0.1)\n"
      "  --plain              no TLS (direct connection to the sink, or a plain port)\n"
      "  --sni NAME           server name sent (bench.test; \"\" for none)\n"
      "  --sigalgs ecdsa|rsa  restrict the signatures offered, choosing the certificate\n"
      "  --ciphersuites LIST  TLS 1.3 suites offered (TLS_AES_256_GCM_SHA384)\n"
      "  --groups LIST        key exchange groups offered (X25519)\n"
      "  --concurrency N      sessions in flight (32)\n"
      "  --duration S         seconds of load (5); --count N  sessions or requests\n"
      "  --rate R             latency: requests per second (1000)\n"
      "  --baseline-port P    latency: as many plaintext sessions straight to P, each\n"
      "                       request paired with one there (the direct baseline)\n"
      "  --sessions N         latency, bulk: sessions (1)\n"
      "  --direction up|down  bulk (down); --chunk BYTES per command (32 MiB)\n"
      "  --login / --no-login send `LOGIN` before the work (default: bulk, latency, idle)\n"
      "  --idle K             idle: sessions to hold (1000); --hold S; --settle S\n"
      "  --gap-ms MS          setup: pause between sessions (2)\n"
      "  --timeout S          per-answer timeout (10)\n"
      "  --watch NAME=PID     sample CPU and RSS of PID's process tree\n"
      "  --label TEXT         copied into the JSON line\n"
      "  --ready-file PATH    idle: written when the sessions are open\n");
  std::exit(2);
}

double parseNumber(const char* text, const char* what) {
  char* end = nullptr;
  double value = std::strtod(text, &end);
  if (end == text || *end != '\0' || value < 0) {
    std::string problem = std::string("bad number for ") + what + ": " + text;
    usage(problem.c_str());
  }
  return value;
}

void parseOptions(int argc, char** argv) {
  Options& o = gOptions;
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    auto value = [&](const char* what) -> const char* {
      if (i + 1 >= argc) {
        std::string problem = std::string(what) + " needs a value";
        usage(problem.c_str());
      }
      return argv[++i];
    };
    if (arg == "--mode") {
      o.modeName = value("--mode");
      static const std::map<std::string, Mode> modes = {
          {"handshake", Mode::Handshake}, {"starttls", Mode::Starttls}, {"bulk", Mode::Bulk},
          {"latency", Mode::Latency},     {"setup", Mode::Setup},       {"idle", Mode::Idle}};
      auto found = modes.find(o.modeName);
      if (found == modes.end()) {
        usage("unknown mode");
      }
      o.mode = found->second;
    } else if (arg == "--host") {
      o.host = value("--host");
    } else if (arg == "--port") {
      o.port = static_cast<int>(parseNumber(value("--port"), "--port"));
    } else if (arg == "--plain" || arg == "--direct") {
      o.tls = false;
    } else if (arg == "--sni") {
      o.sni = value("--sni");
    } else if (arg == "--sigalgs") {
      o.sigalgs = value("--sigalgs");
      if (o.sigalgs != "ecdsa" && o.sigalgs != "rsa" && !o.sigalgs.empty()) {
        usage("--sigalgs is ecdsa or rsa");
      }
    } else if (arg == "--ciphersuites") {
      o.ciphersuites = value("--ciphersuites");
    } else if (arg == "--groups") {
      o.groups = value("--groups");
    } else if (arg == "--concurrency") {
      o.concurrency = std::max(1, static_cast<int>(parseNumber(value(""), "--concurrency")));
    } else if (arg == "--duration") {
      o.duration = parseNumber(value("--duration"), "--duration");
    } else if (arg == "--count") {
      o.count = static_cast<long>(parseNumber(value("--count"), "--count"));
    } else if (arg == "--rate") {
      o.rate = parseNumber(value("--rate"), "--rate");
    } else if (arg == "--baseline-port") {
      o.baselinePort = static_cast<int>(parseNumber(value("--baseline-port"), "--baseline-port"));
    } else if (arg == "--sessions") {
      o.sessions = std::max(1, static_cast<int>(parseNumber(value(""), "--sessions")));
    } else if (arg == "--direction") {
      o.direction = value("--direction");
      if (o.direction != "up" && o.direction != "down") {
        usage("--direction is up or down");
      }
    } else if (arg == "--chunk") {
      o.chunk = static_cast<unsigned long long>(parseNumber(value("--chunk"), "--chunk"));
    } else if (arg == "--login") {
      o.login = 1;
    } else if (arg == "--no-login") {
      o.login = 0;
    } else if (arg == "--idle") {
      o.idle = static_cast<int>(parseNumber(value("--idle"), "--idle"));
    } else if (arg == "--hold") {
      o.hold = parseNumber(value("--hold"), "--hold");
    } else if (arg == "--settle") {
      o.settle = parseNumber(value("--settle"), "--settle");
    } else if (arg == "--gap-ms") {
      o.gapMs = parseNumber(value("--gap-ms"), "--gap-ms");
    } else if (arg == "--timeout") {
      o.stepTimeout = parseNumber(value("--timeout"), "--timeout");
    } else if (arg == "--label") {
      o.label = value("--label");
    } else if (arg == "--ready-file") {
      o.readyFile = value("--ready-file");
    } else if (arg == "--watch") {
      std::string spec = value("--watch");
      auto equals = spec.find('=');
      if (equals == std::string::npos) {
        usage("--watch takes NAME=PID");
      }
      Watch watch{spec.substr(0, equals), std::atoi(spec.c_str() + equals + 1)};
      if (watch.pid <= 0) {
        usage("--watch takes NAME=PID");
      }
      o.watches.push_back(watch);
    } else if (arg == "--help" || arg == "-h") {
      usage(nullptr);
    } else {
      std::string problem = "unknown option " + std::string(arg);
      usage(problem.c_str());
    }
  }
  if (o.port <= 0 || o.port > 65535) {
    usage("--port is required");
  }
  if (o.login < 0) {
    o.login = (o.mode == Mode::Bulk || o.mode == Mode::Latency || o.mode == Mode::Idle) ? 1 : 0;
  }
  if (o.mode == Mode::Starttls && !o.tls) {
    usage("starttls needs TLS");
  }
  if (o.mode == Mode::Setup) {
    o.concurrency = 1;
  }
  if (o.mode == Mode::Bulk || o.mode == Mode::Latency) {
    o.concurrency = o.sessions;
  }
}

// ---------------------------------------------------------------------------------------------
// Process-tree sampling from /proc: CPU seconds and resident KiB of a process and its descendants

struct Sample {
  double cpuSeconds = 0;
  long rssKib = 0;
  int processes = 0;
};

struct ProcStat {
  int pid = 0;
  int ppid = 0;
  unsigned long long ticks = 0;      // utime + stime
  unsigned long long childTicks = 0; // cutime + cstime (reaped children)
  long rssPages = 0;
};

bool readProcStat(int pid, ProcStat& stat) {
  char path[64];
  std::snprintf(path, sizeof path, "/proc/%d/stat", pid);
  std::ifstream file(path);
  std::string text;
  if (!std::getline(file, text)) {
    return false;
  }
  // The command name may hold spaces and parentheses: fields start after the last ')'.
  auto close = text.rfind(')');
  if (close == std::string::npos) {
    return false;
  }
  std::istringstream fields(text.substr(close + 2));
  std::vector<std::string> f;
  std::string word;
  while (fields >> word) {
    f.push_back(word);
  }
  // f[0] is field 3 (state); field N is f[N - 3].
  if (f.size() < 22) {
    return false;
  }
  stat.pid = pid;
  stat.ppid = std::atoi(f[1].c_str());
  stat.ticks = std::stoull(f[11]) + std::stoull(f[12]);
  stat.childTicks = std::stoull(f[13]) + std::stoull(f[14]);
  stat.rssPages = std::atol(f[21].c_str());
  return true;
}

Sample sampleTree(int root) {
  std::unordered_map<int, ProcStat> all;
  if (DIR* proc = opendir("/proc")) {
    while (dirent* entry = readdir(proc)) {
      int pid = std::atoi(entry->d_name);
      ProcStat stat;
      if (pid > 0 && readProcStat(pid, stat)) {
        all.emplace(pid, stat);
      }
    }
    closedir(proc);
  }
  Sample sample;
  auto rootStat = all.find(root);
  if (rootStat == all.end()) {
    return sample;
  }
  // Breadth-first over the parent links: the root, its children, theirs.
  std::vector<int> tree{root};
  for (std::size_t i = 0; i < tree.size(); ++i) {
    for (const auto& [pid, stat] : all) {
      if (stat.ppid == tree[i] && pid != root) {
        tree.push_back(pid);
      }
    }
  }
  static const double ticksPerSecond = static_cast<double>(sysconf(_SC_CLK_TCK));
  static const long pageKib = sysconf(_SC_PAGESIZE) / 1024;
  unsigned long long ticks = rootStat->second.childTicks;
  for (int pid : tree) {
    const ProcStat& stat = all[pid];
    ticks += stat.ticks;
    sample.rssKib += stat.rssPages * pageKib;
  }
  sample.cpuSeconds = static_cast<double>(ticks) / ticksPerSecond;
  sample.processes = static_cast<int>(tree.size());
  return sample;
}

std::vector<Sample> sampleWatches() {
  std::vector<Sample> samples;
  for (const Watch& watch : gOptions.watches) {
    samples.push_back(sampleTree(watch.pid));
  }
  return samples;
}

double selfCpuSeconds() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) +
         static_cast<double>(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6;
}

// ---------------------------------------------------------------------------------------------
// Shared state of the run

constexpr std::size_t kReadBufferSize = 256 * 1024;
constexpr std::size_t kPayloadSize = 256 * 1024;
constexpr std::size_t kMaxQueued = 1024 * 1024; // bytes handed to libuv before waiting (bulk up)

char gReadBuffer[kReadBufferSize];
char gPlaintext[64 * 1024];   // decrypted records, handed to the dialogue
char gFlushBuffer[64 * 1024]; // small ciphertext writes on their way to the socket
char gPayload[kPayloadSize];
uv_loop_t* gLoop = nullptr;
SSL_CTX* gContext = nullptr;
sockaddr_in gTarget{};
sockaddr_in gBaseline{};

struct Connection;

struct Run {
  std::uint64_t startNs = 0;
  std::uint64_t endNs = 0; // when the last counted unit finished
  bool stopping = false;   // no new sessions or requests
  bool finished = false;
  long started = 0;
  long completed = 0;
  long failed = 0;
  std::map<std::string, long> errors;
  std::vector<double> latenciesUs; // per session (setup, handshake, starttls) or per request
  std::unordered_set<Connection*> live;
  int ready = 0; // sessions past greeting/login (bulk, latency, idle)
  // bulk
  unsigned long long bytes = 0;
  std::uint64_t transferStartNs = 0;
  // latency
  std::uint64_t requestsIssued = 0;
  std::uint64_t requestsAnswered = 0;
  std::uint64_t requestsLost = 0; // outstanding on a session that died
  int idleHeld = 0;               // idle: sessions open when memory was sampled
  std::size_t nextSession = 0;
  std::vector<Connection*> workers;       // sessions ready for requests (latency) in order
  std::vector<Connection*> directWorkers; // the baseline's sessions (latency --baseline-port)
  std::size_t nextDirect = 0;
  std::vector<double> directLatenciesUs;
  std::uint64_t ticks = 0;
  // measurements
  std::vector<Sample> before;
  std::vector<Sample> after;
  double selfCpuBefore = 0;
  double selfCpuAfter = 0;
  std::string version;
  std::string cipher;
  std::string serverKey; // the certificate's key type: which one the proxy chose
  bool measuredIdle = false;
  bool holdExpired = false;
};

Run gRun;
uv_timer_t gTicker;  // latency requests, setup gaps
uv_timer_t gSweeper; // timeouts and the end of the run
uv_signal_t gSigint;
uv_signal_t gSigterm;

void startSession();
void maybeFinishRun();
void measureIdle();

// ---------------------------------------------------------------------------------------------
// A client session

enum class Phase {
  Connecting,
  Handshaking,     // implicit TLS, or after STARTTLS
  Greeting,        // waiting for `* OK`
  StarttlsReply,   // waiting for `a OK` to STARTTLS
  AfterTlsCommand, // starttls mode: waiting for the answer to `b NOOP` / `b LOGIN`
  Login,           // waiting for `l OK` to LOGIN
  Working,         // mode-specific: bulk transfer, latency requests, idle hold
  Closed,
};

struct WriteRequest {
  uv_write_t request;
  std::size_t size;
  char* bytes() { return reinterpret_cast<char*>(this + 1); }
};

struct Connection {
  uv_tcp_t tcp;
  uv_connect_t connect;
  SSL* ssl = nullptr;
  BIO* input = nullptr;  // ciphertext from the socket, read by OpenSSL
  BIO* output = nullptr; // ciphertext from OpenSSL, for the socket
  bool tlsActive = false;
  bool direct = false; // a baseline session: plaintext, straight to the sink
  Phase phase = Phase::Connecting;
  std::string line; // a response line being assembled
  std::uint64_t startNs = 0;
  std::uint64_t deadlineNs = 0; // 0: no answer awaited
  bool counted = false;         // this session's outcome is recorded
  // bulk
  unsigned long long literalLeft = 0; // download bytes still to arrive
  unsigned long long uploadLeft = 0;  // upload bytes still to send
  bool uploadTrailerSent = false;
  unsigned long long commandBytes = 0;
  bool commandOpen = false;
  // latency
  std::deque<std::pair<std::uint64_t, std::uint64_t>> outstanding; // (sequence, sent at)
};

std::uint64_t now() { return uv_hrtime(); }

void armDeadline(Connection* c) {
  c->deadlineNs = now() + static_cast<std::uint64_t>(gOptions.stepTimeout * 1e9);
}

void onClosed(uv_handle_t* handle) noexcept {
  auto* c = static_cast<Connection*>(handle->data);
  if (c->ssl != nullptr) {
    SSL_free(c->ssl); // frees both BIOs
  }
  delete c;
  maybeFinishRun();
}

void onOwnedWriteDone(uv_write_t* request, int status) noexcept;

// Writes bytes to the socket: at once when the socket takes them, otherwise queued with a copy.
bool socketWrite(Connection* c, const char* data, std::size_t size) {
  auto* stream = reinterpret_cast<uv_stream_t*>(&c->tcp);
  if (uv_stream_get_write_queue_size(stream) == 0) {
    uv_buf_t buffer = uv_buf_init(const_cast<char*>(data), static_cast<unsigned>(size));
    int written = uv_try_write(stream, &buffer, 1);
    if (written == static_cast<int>(size)) {
      return true;
    }
    if (written < 0 && written != UV_EAGAIN) {
      return false;
    }
    if (written > 0) {
      data += written;
      size -= static_cast<std::size_t>(written);
    }
  }
  void* memory = ::operator new(sizeof(WriteRequest) + size);
  auto* write = new (memory) WriteRequest{};
  write->size = size;
  write->request.data = c;
  std::memcpy(write->bytes(), data, size);
  uv_buf_t buffer = uv_buf_init(write->bytes(), static_cast<unsigned>(size));
  if (uv_write(&write->request, stream, &buffer, 1, onOwnedWriteDone) != 0) {
    ::operator delete(write);
    return false;
  }
  return true;
}

// Moves whatever OpenSSL produced to the socket.
bool flushTls(Connection* c) {
  std::size_t pending = BIO_ctrl_pending(c->output);
  if (pending == 0) {
    return true;
  }
  auto* stream = reinterpret_cast<uv_stream_t*>(&c->tcp);
  if (uv_stream_get_write_queue_size(stream) == 0 && pending <= sizeof gFlushBuffer) {
    // Small and nothing queued: through a static buffer, no allocation when it all goes out.
    int n = BIO_read(c->output, gFlushBuffer, static_cast<int>(pending));
    return n <= 0 || socketWrite(c, gFlushBuffer, static_cast<std::size_t>(n));
  }
  void* memory = ::operator new(sizeof(WriteRequest) + pending);
  auto* write = new (memory) WriteRequest{};
  write->request.data = c;
  int n = BIO_read(c->output, write->bytes(), static_cast<int>(pending));
  write->size = n > 0 ? static_cast<std::size_t>(n) : 0;
  uv_buf_t buffer = uv_buf_init(write->bytes(), static_cast<unsigned>(write->size));
  if (uv_write(&write->request, stream, &buffer, 1, onOwnedWriteDone) != 0) {
    ::operator delete(write);
    return false;
  }
  return true;
}

void fail(Connection* c, const std::string& reason);
void closeConnection(Connection* c);

bool sendPlain(Connection* c, std::string_view text) {
  if (c->phase == Phase::Closed) {
    return false;
  }
  if (!c->tlsActive) {
    if (!socketWrite(c, text.data(), text.size())) {
      fail(c, "write");
      return false;
    }
    return true;
  }
  std::size_t written = 0;
  if (SSL_write_ex(c->ssl, text.data(), text.size(), &written) != 1 || written != text.size()) {
    fail(c, "tls_write");
    return false;
  }
  if (!flushTls(c)) {
    fail(c, "write");
    return false;
  }
  return true;
}

void recordSuccess(Connection* c) {
  if (c->counted) {
    return;
  }
  c->counted = true;
  ++gRun.completed;
  if (gOptions.mode == Mode::Bulk || gOptions.mode == Mode::Latency) {
    return; // their figures are bytes and requests, not sessions
  }
  gRun.endNs = now();
  gRun.latenciesUs.push_back(static_cast<double>(gRun.endNs - c->startNs) / 1e3);
}

void fail(Connection* c, const std::string& reason) {
  if (c->phase == Phase::Closed) {
    return;
  }
  if (!c->counted) {
    c->counted = true;
    ++gRun.failed;
    ++gRun.errors[reason];
  } else if (gOptions.mode == Mode::Latency || gOptions.mode == Mode::Bulk) {
    ++gRun.errors[reason];
  }
  closeConnection(c);
  if (gOptions.mode != Mode::Bulk && gOptions.mode != Mode::Latency) {
    startSession(); // keeps the concurrency (or the sequence) going
  }
}

void closeConnection(Connection* c) {
  if (c->phase == Phase::Closed) {
    return;
  }
  bool working = c->phase == Phase::Working;
  c->phase = Phase::Closed;
  if (working && gRun.ready > 0) {
    --gRun.ready;
  }
  if (c->tlsActive && c->ssl != nullptr && SSL_is_init_finished(c->ssl)) {
    // A polite close_notify, sent only if the socket takes it at once.
    SSL_shutdown(c->ssl);
    std::size_t pending = BIO_ctrl_pending(c->output);
    if (pending > 0 && pending <= sizeof gFlushBuffer &&
        uv_stream_get_write_queue_size(reinterpret_cast<uv_stream_t*>(&c->tcp)) == 0) {
      int n = BIO_read(c->output, gFlushBuffer, static_cast<int>(pending));
      uv_buf_t buffer = uv_buf_init(gFlushBuffer, static_cast<unsigned>(std::max(n, 0)));
      uv_try_write(reinterpret_cast<uv_stream_t*>(&c->tcp), &buffer, 1);
    }
  }
  gRun.requestsLost += c->outstanding.size();
  c->outstanding.clear();
  gRun.live.erase(c);
  std::erase(gRun.workers, c);
  std::erase(gRun.directWorkers, c);
  uv_close(reinterpret_cast<uv_handle_t*>(&c->tcp), onClosed);
}

// ---------------------------------------------------------------------------------------------
// Mode work once a session is ready (after greeting and login)

void produceUpload(Connection* c);

void issueBulkCommand(Connection* c) {
  c->commandBytes = gOptions.chunk;
  c->commandOpen = true;
  if (gOptions.direction == "down") {
    std::string command = "d DOWNLOAD " + std::to_string(gOptions.chunk) + "\r\n";
    armDeadline(c);
    sendPlain(c, command);
    return;
  }
  std::string command = "u UPLOAD {" + std::to_string(gOptions.chunk) + "+}\r\n";
  c->uploadLeft = gOptions.chunk;
  c->uploadTrailerSent = false;
  armDeadline(c);
  if (sendPlain(c, command)) {
    produceUpload(c);
  }
}

// Sends upload bytes while libuv holds less than kMaxQueued; write callbacks call again.
void produceUpload(Connection* c) {
  auto* stream = reinterpret_cast<uv_stream_t*>(&c->tcp);
  while (c->phase == Phase::Working && c->uploadLeft > 0 &&
         uv_stream_get_write_queue_size(stream) < kMaxQueued) {
    std::size_t n =
        static_cast<std::size_t>(std::min<unsigned long long>(c->uploadLeft, kPayloadSize));
    if (!sendPlain(c, std::string_view(gPayload, n))) {
      return;
    }
    c->uploadLeft -= n;
    armDeadline(c);
  }
  if (c->phase == Phase::Working && c->uploadLeft == 0 && c->commandOpen && !c->uploadTrailerSent) {
    c->uploadTrailerSent = true;
    sendPlain(c, "\r\n");
  }
}

void issueLatencyRequest(bool direct) {
  auto& pool = direct ? gRun.directWorkers : gRun.workers;
  if (pool.empty()) {
    return;
  }
  std::size_t& next = direct ? gRun.nextDirect : gRun.nextSession;
  Connection* c = pool[next++ % pool.size()];
  std::uint64_t sequence = ++gRun.requestsIssued;
  char command[48];
  int n = std::snprintf(command, sizeof command, "r%llu NOOP\r\n",
                        static_cast<unsigned long long>(sequence));
  c->outstanding.emplace_back(sequence, now());
  if (c->deadlineNs == 0) {
    armDeadline(c);
  }
  sendPlain(c, std::string_view(command, static_cast<std::size_t>(n)));
}

void onTick(uv_timer_t*) noexcept {
  if (gRun.stopping) {
    uv_timer_stop(&gTicker);
    return;
  }
  double elapsed = static_cast<double>(now() - gRun.startNs) / 1e9;
  if (gOptions.duration > 0 && elapsed >= gOptions.duration) {
    gRun.stopping = true;
    uv_timer_stop(&gTicker);
    maybeFinishRun();
    return;
  }
  // Open loop: requests are due on a fixed schedule, whatever the answers are doing.
  auto due = static_cast<std::uint64_t>(elapsed * gOptions.rate);
  if (gOptions.count > 0) {
    due = std::min<std::uint64_t>(due, static_cast<std::uint64_t>(gOptions.count));
  }
  bool paired = gOptions.baselinePort != 0;
  if (gRun.workers.empty() || (paired && gRun.directWorkers.empty())) {
    gRun.stopping = true; // every session died
    uv_timer_stop(&gTicker);
    maybeFinishRun();
    return;
  }
  // Each request is paired with one to the baseline sent at the same moment, the two in turns
  // first, so both see the same machine.
  std::uint64_t perRequest = paired ? 2 : 1;
  bool directFirst = (++gRun.ticks % 2) == 0;
  while (gRun.requestsIssued < due * perRequest) {
    if (paired) {
      issueLatencyRequest(directFirst);
      issueLatencyRequest(!directFirst);
    } else {
      issueLatencyRequest(false);
    }
  }
  if (gOptions.count > 0 &&
      gRun.requestsIssued >= static_cast<std::uint64_t>(gOptions.count) * perRequest) {
    gRun.stopping = true;
    uv_timer_stop(&gTicker);
    maybeFinishRun();
  }
}

void startMeasuredWindow() {
  gRun.before = sampleWatches();
  gRun.selfCpuBefore = selfCpuSeconds();
  gRun.startNs = now();
}

void onSessionReady(Connection* c) {
  c->phase = Phase::Working;
  c->deadlineNs = 0;
  if (gRun.version.empty() && c->tlsActive) {
    gRun.version = SSL_get_version(c->ssl);
    gRun.cipher = SSL_get_cipher_name(c->ssl);
    if (X509* certificate = SSL_get0_peer_certificate(c->ssl)) {
      int type = EVP_PKEY_get_base_id(X509_get0_pubkey(certificate));
      gRun.serverKey = type == EVP_PKEY_EC ? "ecdsa" : type == EVP_PKEY_RSA ? "rsa" : "other";
    }
  }
  switch (gOptions.mode) {
  case Mode::Handshake:
  case Mode::Setup:
    recordSuccess(c);
    closeConnection(c);
    startSession();
    return;
  case Mode::Starttls:
    recordSuccess(c);
    closeConnection(c);
    startSession();
    return;
  case Mode::Bulk:
    ++gRun.ready;
    if (gRun.ready == gOptions.sessions) {
      // The window is the transfer only: setup is not bulk work.
      startMeasuredWindow();
      gRun.transferStartNs = gRun.startNs;
      for (Connection* each : std::vector<Connection*>(gRun.live.begin(), gRun.live.end())) {
        if (each->phase == Phase::Working) {
          issueBulkCommand(each);
        }
      }
    }
    return;
  case Mode::Latency:
    ++gRun.ready;
    (c->direct ? gRun.directWorkers : gRun.workers).push_back(c);
    if (gRun.ready == gOptions.sessions * (gOptions.baselinePort != 0 ? 2 : 1)) {
      startMeasuredWindow();
      uv_timer_start(&gTicker, onTick, 1, 1);
    }
    return;
  case Mode::Idle:
    ++gRun.ready;
    recordSuccess(c);
    startSession();
    return;
  }
}

void onBulkCommandDone(Connection* c) {
  gRun.bytes += c->commandBytes;
  gRun.endNs = now();
  c->commandOpen = false;
  c->deadlineNs = 0;
  double elapsed = static_cast<double>(now() - gRun.transferStartNs) / 1e9;
  if (gRun.stopping || (gOptions.duration > 0 && elapsed >= gOptions.duration) ||
      (gOptions.count > 0 &&
       gRun.bytes >= static_cast<unsigned long long>(gOptions.count) * gOptions.chunk)) {
    gRun.stopping = true;
    recordSuccess(c);
    closeConnection(c);
    return;
  }
  issueBulkCommand(c);
}

// ---------------------------------------------------------------------------------------------
// The dialogue: response lines as they arrive

bool startsWith(std::string_view text, std::string_view prefix) {
  return text.size() >= prefix.size() && text.substr(0, prefix.size()) == prefix;
}

bool beginTls(Connection* c);

void sendLoginOrReady(Connection* c) {
  if (gOptions.login != 0) {
    c->phase = Phase::Login;
    armDeadline(c);
    sendPlain(c, "l LOGIN bench bench\r\n");
    return;
  }
  onSessionReady(c);
}

// The tagged status of `line` for `tag`: "OK", "NO", "BAD" or "" when the line is not tagged so.
std::string_view taggedStatus(std::string_view line, std::string_view tag) {
  if (line.size() <= tag.size() + 1 || line.substr(0, tag.size()) != tag ||
      line[tag.size()] != ' ') {
    return {};
  }
  std::string_view rest = line.substr(tag.size() + 1);
  auto space = rest.find(' ');
  return rest.substr(0, space);
}

void onLine(Connection* c, std::string_view line) {
  switch (c->phase) {
  case Phase::Greeting:
    if (startsWith(line, "* OK")) {
      if (gOptions.mode == Mode::Starttls && !c->tlsActive) {
        c->phase = Phase::StarttlsReply;
        armDeadline(c);
        sendPlain(c, "a STARTTLS\r\n");
        return;
      }
      if (gOptions.mode == Mode::Starttls) {
        return; // a greeting after TLS is not expected, but harmless
      }
      sendLoginOrReady(c);
      return;
    }
    if (startsWith(line, "* ")) {
      fail(c, "greeting_refused");
      return;
    }
    return;
  case Phase::StarttlsReply: {
    std::string_view status = taggedStatus(line, "a");
    if (status.empty()) {
      return; // untagged lines before the answer
    }
    if (status != "OK") {
      fail(c, "starttls_refused");
      return;
    }
    // Whatever followed the go-ahead in the same read would be plaintext injection: drop it.
    c->line.clear();
    beginTls(c);
    return;
  }
  case Phase::AfterTlsCommand: {
    std::string_view status = taggedStatus(line, "b");
    if (status.empty()) {
      return;
    }
    if (status != "OK") {
      fail(c, "command_refused");
      return;
    }
    onSessionReady(c);
    return;
  }
  case Phase::Login: {
    std::string_view status = taggedStatus(line, "l");
    if (status.empty()) {
      return;
    }
    if (status != "OK") {
      fail(c, "login_refused");
      return;
    }
    onSessionReady(c);
    return;
  }
  case Phase::Working:
    if (gOptions.mode == Mode::Bulk) {
      if (startsWith(line, "* BYTES {")) {
        auto open = line.find('{');
        unsigned long long size = 0;
        std::from_chars(line.data() + open + 1, line.data() + line.size(), size);
        c->literalLeft = size;
        armDeadline(c);
        return;
      }
      std::string_view tag = gOptions.direction == "down" ? "d" : "u";
      std::string_view status = taggedStatus(line, tag);
      if (status.empty()) {
        return;
      }
      if (status != "OK") {
        fail(c, "bulk_refused");
        return;
      }
      onBulkCommandDone(c);
      return;
    }
    if (gOptions.mode == Mode::Latency) {
      if (line.empty() || line[0] != 'r' || c->outstanding.empty()) {
        return;
      }
      std::uint64_t answeredAt = now();
      auto [sequence, sentAt] = c->outstanding.front();
      c->outstanding.pop_front();
      (c->direct ? gRun.directLatenciesUs : gRun.latenciesUs)
          .push_back(static_cast<double>(answeredAt - sentAt) / 1e3);
      ++gRun.requestsAnswered;
      gRun.endNs = answeredAt;
      if (c->outstanding.empty()) {
        c->deadlineNs = 0;
      } else {
        armDeadline(c);
      }
      if (gRun.stopping) {
        maybeFinishRun();
      }
      return;
    }
    return;
  default:
    return;
  }
}

// Plaintext from the server: download literals are counted and dropped, lines are assembled.
void onPlaintext(Connection* c, const char* data, std::size_t size) {
  while (size > 0 && c->phase != Phase::Closed) {
    if (c->literalLeft > 0) {
      std::size_t n = static_cast<std::size_t>(std::min<unsigned long long>(c->literalLeft, size));
      c->literalLeft -= n;
      data += n;
      size -= n;
      continue;
    }
    const char* newline = static_cast<const char*>(std::memchr(data, '\n', size));
    if (newline == nullptr) {
      c->line.append(data, size);
      if (c->line.size() > 64 * 1024) {
        fail(c, "line_too_long");
      }
      return;
    }
    std::size_t n = static_cast<std::size_t>(newline - data);
    std::string owned;
    std::string_view line(data, n);
    if (!c->line.empty()) {
      c->line.append(data, n);
      owned.swap(c->line);
      line = owned;
    }
    if (!line.empty() && line.back() == '\r') {
      line.remove_suffix(1);
    }
    data = newline + 1;
    size -= n + 1;
    bool wasPlain = !c->tlsActive;
    onLine(c, line);
    if (wasPlain && c->tlsActive) {
      // STARTTLS began: bytes after the go-ahead belong to the handshake, not to lines.
      if (size > 0) {
        BIO_write(c->input, data, static_cast<int>(size));
      }
      return;
    }
  }
}

void onHandshakeDone(Connection* c) {
  if (gOptions.mode == Mode::Starttls) {
    c->phase = Phase::AfterTlsCommand;
    armDeadline(c);
    sendPlain(c, gOptions.login != 0 ? "b LOGIN bench bench\r\n" : "b NOOP\r\n");
    return;
  }
  c->phase = Phase::Greeting;
  armDeadline(c);
}

// Runs OpenSSL over what arrived: the handshake first, then records into plaintext.
void driveTls(Connection* c) {
  if (!SSL_is_init_finished(c->ssl)) {
    ERR_clear_error();
    int result = SSL_do_handshake(c->ssl);
    if (result != 1) {
      int error = SSL_get_error(c->ssl, result);
      if (error == SSL_ERROR_WANT_READ || error == SSL_ERROR_WANT_WRITE) {
        if (!flushTls(c)) {
          fail(c, "write");
        }
        return;
      }
      fail(c, "tls_handshake");
      return;
    }
    if (!flushTls(c)) {
      fail(c, "write");
      return;
    }
    onHandshakeDone(c);
    if (c->phase == Phase::Closed) {
      return;
    }
  }
  for (;;) {
    std::size_t read = 0;
    ERR_clear_error();
    if (SSL_read_ex(c->ssl, gPlaintext, sizeof gPlaintext, &read) == 1) {
      onPlaintext(c, gPlaintext, read);
      if (c->phase == Phase::Closed || !c->tlsActive) {
        return;
      }
      continue;
    }
    int error = SSL_get_error(c->ssl, 0);
    if (error == SSL_ERROR_WANT_READ || error == SSL_ERROR_WANT_WRITE) {
      break;
    }
    if (error == SSL_ERROR_ZERO_RETURN) {
      fail(c, "server_closed");
      return;
    }
    fail(c, "tls_read");
    return;
  }
  if (!flushTls(c)) {
    fail(c, "write");
  }
}

bool beginTls(Connection* c) {
  c->ssl = SSL_new(gContext);
  c->input = BIO_new(BIO_s_mem());
  c->output = BIO_new(BIO_s_mem());
  BIO_set_mem_eof_return(c->input, -1);
  SSL_set_bio(c->ssl, c->input, c->output);
  SSL_set_connect_state(c->ssl);
  if (!gOptions.sni.empty()) {
    SSL_set_tlsext_host_name(c->ssl, gOptions.sni.c_str());
  }
  c->tlsActive = true;
  c->phase = Phase::Handshaking;
  armDeadline(c);
  ERR_clear_error();
  int result = SSL_do_handshake(c->ssl); // produces the ClientHello
  if (result != 1) {
    int error = SSL_get_error(c->ssl, result);
    if (error != SSL_ERROR_WANT_READ && error != SSL_ERROR_WANT_WRITE) {
      fail(c, "tls_start");
      return false;
    }
  }
  if (!flushTls(c)) {
    fail(c, "write");
    return false;
  }
  return true;
}

void onAlloc(uv_handle_t*, std::size_t, uv_buf_t* buffer) noexcept {
  *buffer = uv_buf_init(gReadBuffer, kReadBufferSize);
}

void onRead(uv_stream_t* stream, ssize_t nread, const uv_buf_t* buffer) noexcept {
  auto* c = static_cast<Connection*>(stream->data);
  if (nread == 0 || c->phase == Phase::Closed) {
    return;
  }
  if (nread < 0) {
    if (gOptions.mode == Mode::Bulk && gRun.stopping) {
      closeConnection(c);
      return;
    }
    fail(c, nread == UV_EOF ? "server_closed" : "read_error");
    return;
  }
  if (!c->tlsActive) {
    onPlaintext(c, buffer->base, static_cast<std::size_t>(nread));
    if (c->tlsActive && c->phase != Phase::Closed && BIO_ctrl_pending(c->input) > 0) {
      driveTls(c);
    }
    return;
  }
  BIO_write(c->input, buffer->base, static_cast<int>(nread));
  driveTls(c);
}

void onOwnedWriteDone(uv_write_t* request, int status) noexcept {
  auto* write = reinterpret_cast<WriteRequest*>(request);
  auto* c = static_cast<Connection*>(request->data);
  ::operator delete(write);
  if (status == UV_ECANCELED || c->phase == Phase::Closed) {
    return;
  }
  if (status != 0) {
    fail(c, "write");
    return;
  }
  if (gOptions.mode == Mode::Bulk && c->uploadLeft > 0) {
    produceUpload(c);
  }
}

void onConnected(uv_connect_t* request, int status) noexcept {
  auto* c = static_cast<Connection*>(request->data);
  if (c->phase == Phase::Closed) {
    return;
  }
  if (status != 0) {
    fail(c, std::string("connect_") + uv_err_name(status));
    return;
  }
  uv_tcp_nodelay(&c->tcp, 1);
  if (uv_read_start(reinterpret_cast<uv_stream_t*>(&c->tcp), onAlloc, onRead) != 0) {
    fail(c, "read_start");
    return;
  }
  if (gOptions.tls && !c->direct && gOptions.mode != Mode::Starttls) {
    beginTls(c);
    return;
  }
  c->phase = Phase::Greeting;
  armDeadline(c);
}

// ---------------------------------------------------------------------------------------------
// Sessions, the run's bounds and its report

long sessionTarget() {
  switch (gOptions.mode) {
  case Mode::Bulk:
  case Mode::Latency:
    return gOptions.sessions;
  case Mode::Idle:
    return gOptions.idle;
  default:
    return gOptions.count; // 0: bounded by time
  }
}

bool mayStartSession() {
  if (gRun.stopping) {
    return false;
  }
  long target = sessionTarget();
  if (target > 0 && gRun.started >= target) {
    return false;
  }
  if (gOptions.mode == Mode::Handshake || gOptions.mode == Mode::Starttls ||
      gOptions.mode == Mode::Setup) {
    double elapsed = static_cast<double>(now() - gRun.startNs) / 1e9;
    if (gOptions.duration > 0 && elapsed >= gOptions.duration) {
      return false;
    }
  }
  return true;
}

void launchSession(bool direct = false) {
  auto* c = new Connection;
  c->direct = direct;
  c->tcp.data = c;
  c->connect.data = c;
  c->startNs = now();
  uv_tcp_init(gLoop, &c->tcp);
  ++gRun.started;
  gRun.live.insert(c);
  armDeadline(c);
  const sockaddr_in& target = direct ? gBaseline : gTarget;
  int status =
      uv_tcp_connect(&c->connect, &c->tcp, reinterpret_cast<const sockaddr*>(&target), onConnected);
  if (status != 0) {
    // Counted here and not replaced at once (that could recurse); the sweeper tops up.
    c->counted = true;
    ++gRun.failed;
    ++gRun.errors[std::string("connect_") + uv_err_name(status)];
    closeConnection(c);
  }
}

void onGap(uv_timer_t*) noexcept {
  if (mayStartSession()) {
    launchSession();
  } else {
    gRun.stopping = true;
    maybeFinishRun();
  }
}

// Starts the next session if the mode and the bounds allow (called when one ends).
void startSession() {
  if (gOptions.mode == Mode::Setup) {
    // One at a time, with a pause so the proxy has finished the previous one.
    if (gRun.live.empty()) {
      uv_timer_start(&gTicker, onGap, static_cast<std::uint64_t>(gOptions.gapMs), 0);
    }
    return;
  }
  if (!mayStartSession()) {
    if (gOptions.mode != Mode::Idle) {
      gRun.stopping = true;
    }
    maybeFinishRun();
    return;
  }
  if (gOptions.mode == Mode::Idle) {
    // Opening is paced by --concurrency sessions in their setup at once.
    long opening = static_cast<long>(gRun.live.size()) - gRun.ready;
    if (opening >= gOptions.concurrency) {
      return;
    }
  }
  launchSession();
}

void onHoldDone(uv_timer_t*) noexcept {
  gRun.holdExpired = true;
  gRun.stopping = true;
  maybeFinishRun();
}

uv_timer_t gSettle;

void onSettled(uv_timer_t*) noexcept { measureIdle(); }

// Called whenever a session ends or a bound may have been reached.
void maybeFinishRun() {
  if (gRun.finished) {
    return;
  }
  if (gOptions.mode == Mode::Idle) {
    if (!gRun.measuredIdle) {
      if (gRun.started >= gOptions.idle &&
          gRun.live.size() == static_cast<std::size_t>(gRun.ready) &&
          !uv_is_active(reinterpret_cast<uv_handle_t*>(&gSettle))) {
        uv_timer_start(&gSettle, onSettled, static_cast<std::uint64_t>(gOptions.settle * 1000), 0);
      }
      return;
    }
    if (!gRun.stopping) {
      return;
    }
    // Close the held sessions; the run ends when the last one is gone.
    for (Connection* c : std::vector<Connection*>(gRun.live.begin(), gRun.live.end())) {
      closeConnection(c);
    }
  }
  if (gOptions.mode == Mode::Latency && gRun.stopping) {
    if (gRun.requestsAnswered + gRun.requestsLost < gRun.requestsIssued) {
      return; // answers still on their way; the sweeper bounds the wait
    }
    for (Connection* c : std::vector<Connection*>(gRun.live.begin(), gRun.live.end())) {
      recordSuccess(c);
      closeConnection(c);
    }
  }
  if (!gRun.stopping || !gRun.live.empty()) {
    return;
  }
  gRun.finished = true;
  uv_stop(gLoop);
}

void measureIdle() {
  gRun.after = sampleWatches();
  gRun.measuredIdle = true;
  gRun.idleHeld = gRun.ready;
  gRun.endNs = now();
  if (!gOptions.readyFile.empty()) {
    if (FILE* file = std::fopen(gOptions.readyFile.c_str(), "w")) {
      std::fprintf(file, "%d\n", gRun.ready);
      std::fclose(file);
    }
  }
  if (gOptions.hold > 0) {
    uv_timer_start(&gTicker, onHoldDone, static_cast<std::uint64_t>(gOptions.hold * 1000), 0);
    return;
  }
  gRun.stopping = true;
  maybeFinishRun();
}

void onSweep(uv_timer_t*) noexcept {
  std::uint64_t t = now();
  std::vector<Connection*> late;
  for (Connection* c : gRun.live) {
    if (c->deadlineNs != 0 && t > c->deadlineNs) {
      late.push_back(c);
    }
  }
  for (Connection* c : late) {
    fail(c, "timeout");
  }
  double elapsed = static_cast<double>(t - gRun.startNs) / 1e9;
  if (gRun.startNs != 0 && gOptions.duration > 0 && elapsed >= gOptions.duration &&
      gOptions.mode != Mode::Idle) {
    gRun.stopping = true;
  }
  // Sessions that failed to start are replaced here, at most once per sweep each.
  bool concurrent = gOptions.mode == Mode::Handshake || gOptions.mode == Mode::Starttls ||
                    gOptions.mode == Mode::Idle;
  long opening =
      static_cast<long>(gRun.live.size()) - (gOptions.mode == Mode::Idle ? gRun.ready : 0);
  while (concurrent && opening < gOptions.concurrency && mayStartSession()) {
    launchSession();
    ++opening;
  }
  if (gOptions.mode == Mode::Setup && gRun.live.empty() &&
      !uv_is_active(reinterpret_cast<uv_handle_t*>(&gTicker))) {
    startSession();
  }
  // Bulk sessions still transferring when time is up finish their command.
  maybeFinishRun();
}

void onSignal(uv_signal_t*, int) noexcept {
  gRun.stopping = true;
  if (gOptions.mode == Mode::Idle && !gRun.measuredIdle) {
    gRun.measuredIdle = true; // stop before the measurement: report what there is
    gRun.idleHeld = gRun.ready;
    gRun.after = sampleWatches();
  }
  for (Connection* c : std::vector<Connection*>(gRun.live.begin(), gRun.live.end())) {
    closeConnection(c);
  }
  maybeFinishRun();
}

double percentile(std::vector<double>& sorted, double p) {
  if (sorted.empty()) {
    return 0;
  }
  double rank = p / 100.0 * static_cast<double>(sorted.size() - 1);
  auto low = static_cast<std::size_t>(std::floor(rank));
  auto high = static_cast<std::size_t>(std::ceil(rank));
  double fraction = rank - static_cast<double>(low);
  return sorted[low] + (sorted[high] - sorted[low]) * fraction;
}

std::string jsonString(std::string_view text) {
  std::string out = "\"";
  for (char ch : text) {
    if (ch == '"' || ch == '\\') {
      out += '\\';
      out += ch;
    } else if (static_cast<unsigned char>(ch) < 0x20) {
      char escape[8];
      std::snprintf(escape, sizeof escape, "\\u%04x", ch);
      out += escape;
    } else {
      out += ch;
    }
  }
  return out + "\"";
}

std::string number(double value, int decimals = 3) {
  if (!std::isfinite(value)) {
    return "null";
  }
  char buffer[64];
  std::snprintf(buffer, sizeof buffer, "%.*f", decimals, value);
  return buffer;
}

void report() {
  if (gRun.after.empty()) {
    gRun.after = sampleWatches();
  }
  gRun.selfCpuAfter = selfCpuSeconds();
  const Options& o = gOptions;
  std::uint64_t end = gRun.endNs != 0 ? gRun.endNs : now();
  double elapsed =
      gRun.startNs != 0 && end > gRun.startNs ? static_cast<double>(end - gRun.startNs) / 1e9 : 0;
  std::string out = "{\"tool\":\"loadgen\",\"mode\":" + jsonString(o.modeName);
  out += ",\"label\":" + jsonString(o.label);
  out += ",\"target\":" + jsonString(o.host + ":" + std::to_string(o.port));
  out += ",\"tls\":" + std::string(o.tls ? "true" : "false");
  if (o.tls) {
    out += ",\"sigalgs\":" + jsonString(o.sigalgs.empty() ? "default" : o.sigalgs);
    out += ",\"version\":" + jsonString(gRun.version);
    out += ",\"cipher\":" + jsonString(gRun.cipher);
    out += ",\"server_key\":" + jsonString(gRun.serverKey);
  }
  out += ",\"login\":" + std::string(o.login != 0 ? "true" : "false");
  out += ",\"concurrency\":" + std::to_string(o.concurrency);
  out += ",\"elapsed_s\":" + number(elapsed, 4);
  out += ",\"started\":" + std::to_string(gRun.started);
  out += ",\"completed\":" + std::to_string(gRun.completed);
  out += ",\"failed\":" + std::to_string(gRun.failed);
  out += ",\"errors\":{";
  bool first = true;
  for (const auto& [reason, n] : gRun.errors) {
    out += (first ? "" : ",") + jsonString(reason) + ":" + std::to_string(n);
    first = false;
  }
  out += "}";
  double proxyCpu = NAN;
  out += ",\"cpu_s\":{";
  for (std::size_t i = 0; i < o.watches.size(); ++i) {
    double cpu = gRun.after[i].cpuSeconds - gRun.before[i].cpuSeconds;
    if (o.watches[i].name == "proxy") {
      proxyCpu = cpu;
    }
    out += (i == 0 ? "" : ",") + jsonString(o.watches[i].name) + ":" + number(cpu, 3);
  }
  out += "},\"client_cpu_s\":" + number(gRun.selfCpuAfter - gRun.selfCpuBefore, 3);
  out += ",\"processes\":{";
  for (std::size_t i = 0; i < o.watches.size(); ++i) {
    out += (i == 0 ? "" : ",") + jsonString(o.watches[i].name) + ":" +
           std::to_string(gRun.after[i].processes);
  }
  out += "}";
  std::vector<double> sorted = gRun.latenciesUs;
  std::sort(sorted.begin(), sorted.end());
  switch (o.mode) {
  case Mode::Handshake:
  case Mode::Starttls: {
    double rate = elapsed > 0 ? static_cast<double>(gRun.completed) / elapsed : 0;
    out += ",\"rate_per_s\":" + number(rate, 1);
    out += ",\"per_proxy_cpu_s\":" +
           number(proxyCpu > 0 ? static_cast<double>(gRun.completed) / proxyCpu : NAN, 1);
    out += ",\"p50_us\":" + number(percentile(sorted, 50), 1);
    out += ",\"p99_us\":" + number(percentile(sorted, 99), 1);
    break;
  }
  case Mode::Setup:
    out += ",\"p50_us\":" + number(percentile(sorted, 50), 1);
    out += ",\"p99_us\":" + number(percentile(sorted, 99), 1);
    out += ",\"min_us\":" + number(sorted.empty() ? NAN : sorted.front(), 1);
    out += ",\"max_us\":" + number(sorted.empty() ? NAN : sorted.back(), 1);
    break;
  case Mode::Bulk: {
    double megabytes = static_cast<double>(gRun.bytes) / 1e6;
    out += ",\"direction\":" + jsonString(o.direction);
    out += ",\"bytes\":" + std::to_string(gRun.bytes);
    out += ",\"mb_s\":" + number(elapsed > 0 ? megabytes / elapsed : 0, 1);
    out += ",\"mb_per_proxy_cpu_s\":" + number(proxyCpu > 0 ? megabytes / proxyCpu : NAN, 1);
    break;
  }
  case Mode::Latency:
    out += ",\"rate\":" + number(o.rate, 1);
    out += ",\"requests\":" + std::to_string(gRun.latenciesUs.size());
    out += ",\"unanswered\":" + std::to_string(gRun.requestsIssued - gRun.requestsAnswered);
    out += ",\"lost\":" + std::to_string(gRun.requestsLost);
    out += ",\"p50_us\":" + number(percentile(sorted, 50), 1);
    out += ",\"p90_us\":" + number(percentile(sorted, 90), 1);
    out += ",\"p99_us\":" + number(percentile(sorted, 99), 1);
    out += ",\"max_us\":" + number(sorted.empty() ? NAN : sorted.back(), 1);
    if (o.baselinePort != 0) {
      std::vector<double> direct = gRun.directLatenciesUs;
      std::sort(direct.begin(), direct.end());
      out += ",\"direct_requests\":" + std::to_string(direct.size());
      out += ",\"direct_p50_us\":" + number(percentile(direct, 50), 1);
      out += ",\"direct_p99_us\":" + number(percentile(direct, 99), 1);
      out += ",\"added_p50_us\":" + number(percentile(sorted, 50) - percentile(direct, 50), 1);
      out += ",\"added_p99_us\":" + number(percentile(sorted, 99) - percentile(direct, 99), 1);
    }
    break;
  case Mode::Idle: {
    out += ",\"idle_sessions\":" + std::to_string(gRun.idleHeld);
    out += ",\"rss_kib\":{";
    for (std::size_t i = 0; i < o.watches.size(); ++i) {
      out += (i == 0 ? "" : ",") + jsonString(o.watches[i].name) + ":[" +
             std::to_string(gRun.before[i].rssKib) + "," + std::to_string(gRun.after[i].rssKib) +
             "]";
    }
    out += "}";
    for (std::size_t i = 0; i < o.watches.size(); ++i) {
      if (o.watches[i].name == "proxy" && gRun.idleHeld > 0) {
        double perSession = static_cast<double>(gRun.after[i].rssKib - gRun.before[i].rssKib) /
                            static_cast<double>(gRun.idleHeld);
        out += ",\"kib_per_session\":" + number(perSession, 2);
      }
    }
    out += ",\"p50_us\":" + number(percentile(sorted, 50), 1);
    break;
  }
  }
  out += "}\n";
  std::fwrite(out.data(), 1, out.size(), stdout);
  std::fflush(stdout);
}

void setUpTls() {
  gContext = SSL_CTX_new(TLS_client_method());
  SSL_CTX_set_min_proto_version(gContext, TLS1_3_VERSION);
  SSL_CTX_set_max_proto_version(gContext, TLS1_3_VERSION);
  SSL_CTX_set_verify(gContext, SSL_VERIFY_NONE, nullptr);
  // Every handshake is a full one: nothing is cached, nothing offered for resumption.
  SSL_CTX_set_session_cache_mode(gContext, SSL_SESS_CACHE_OFF);
  SSL_CTX_set_mode(gContext, SSL_MODE_RELEASE_BUFFERS);
  bool ok = SSL_CTX_set_ciphersuites(gContext, gOptions.ciphersuites.c_str()) == 1 &&
            SSL_CTX_set1_groups_list(gContext, gOptions.groups.c_str()) == 1;
  if (gOptions.sigalgs == "ecdsa") {
    ok = ok && SSL_CTX_set1_sigalgs_list(gContext, "ECDSA+SHA256:ECDSA+SHA384:ECDSA+SHA512") == 1;
  } else if (gOptions.sigalgs == "rsa") {
    // RSA+SHA256 (PKCS#1) only so that a certificate signed that way is acceptable; TLS 1.3
    // itself signs with PSS.
    ok = ok && SSL_CTX_set1_sigalgs_list(gContext, "rsa_pss_rsae_sha256:rsa_pss_rsae_sha384:"
                                                   "rsa_pss_rsae_sha512:RSA+SHA256") == 1;
  }
  if (!ok) {
    std::fprintf(stderr, "loadgen: TLS settings refused by OpenSSL\n");
    std::exit(2);
  }
}

} // namespace

int main(int argc, char** argv) {
  parseOptions(argc, argv);
  signal(SIGPIPE, SIG_IGN);
  for (std::size_t i = 0; i < kPayloadSize; ++i) {
    gPayload[i] = static_cast<char>('A' + i % 26);
  }
  if (uv_ip4_addr(gOptions.host.c_str(), gOptions.baselinePort, &gBaseline) != 0 ||
      uv_ip4_addr(gOptions.host.c_str(), gOptions.port, &gTarget) != 0) {
    usage("--host is an IPv4 literal");
  }
  if (gOptions.tls) {
    setUpTls();
  }
  gLoop = uv_default_loop();
  uv_timer_init(gLoop, &gTicker);
  uv_timer_init(gLoop, &gSweeper);
  uv_timer_init(gLoop, &gSettle);
  uv_signal_init(gLoop, &gSigint);
  uv_signal_init(gLoop, &gSigterm);
  uv_signal_start(&gSigint, onSignal, SIGINT);
  uv_signal_start(&gSigterm, onSignal, SIGTERM);
  uv_timer_start(&gSweeper, onSweep, 100, 100);

  // Session modes measure from the first connect; bulk and latency from when all are ready.
  if (gOptions.mode != Mode::Bulk && gOptions.mode != Mode::Latency) {
    startMeasuredWindow();
  } else {
    gRun.startNs = now();
  }
  int initial = gOptions.mode == Mode::Setup ? 1 : gOptions.concurrency;
  if (gOptions.mode == Mode::Idle) {
    initial = std::min(gOptions.concurrency, gOptions.idle);
  }
  if (gOptions.count > 0 && gOptions.mode != Mode::Latency && gOptions.mode != Mode::Bulk) {
    initial = static_cast<int>(std::min<long>(initial, gOptions.count));
  }
  for (int i = 0; i < initial; ++i) {
    launchSession();
    if (gOptions.mode == Mode::Latency && gOptions.baselinePort != 0) {
      launchSession(true);
    }
  }
  uv_run(gLoop, UV_RUN_DEFAULT);

  // The window ends once every session is closed (the proxy's part of closing included).
  if (gRun.after.empty()) {
    usleep(100 * 1000);
    gRun.after = sampleWatches();
  }
  if (gRun.before.empty()) {
    gRun.before = gRun.after;
  }
  report();
  uv_close(reinterpret_cast<uv_handle_t*>(&gTicker), nullptr);
  uv_close(reinterpret_cast<uv_handle_t*>(&gSweeper), nullptr);
  uv_close(reinterpret_cast<uv_handle_t*>(&gSettle), nullptr);
  uv_close(reinterpret_cast<uv_handle_t*>(&gSigint), nullptr);
  uv_close(reinterpret_cast<uv_handle_t*>(&gSigterm), nullptr);
  uv_run(gLoop, UV_RUN_DEFAULT);
  SSL_CTX_free(gContext);
  bool usable = gRun.completed > 0 || gRun.requestsAnswered > 0;
  return usable ? 0 : 1;
}
