// One admin connection: read a bounded request, answer it, close.
#include "proxy/admin/admin_server.h"

#include "proxy/log.h"
#include "proxy/net/tcp_stream.h"
#include "proxy/net/timer.h"

#include <algorithm>

namespace admin {

class Connection final : private net::StreamHandler, private net::TimerHandler {
public:
  Connection(AdminServer& owner, uv_loop_t* loop) : owner_(owner), loop_(loop) {}
  ~Connection() { end(); }

  bool start(uv_stream_t* listening) {
    stream_ = net::TcpStream::accept(listening, this);
    if (stream_ == nullptr) {
      return false;
    }
    remote_ = net::formatAddress(stream_->peer());
    timer_ = net::Timer::create(loop_, this);
    timer_->start(AdminServer::kRequestTimeout);
    if (stream_->startReading() != 0) {
      end();
      return false;
    }
    return true;
  }

  // Closes what is still open without answering (shutdown, or the owner going away).
  void end() {
    if (timer_ != nullptr) {
      timer_->close();
      timer_ = nullptr;
    }
    if (stream_ != nullptr) {
      stream_->close();
      stream_ = nullptr;
    }
  }

private:
  void onConnected(int) override {}
  void onSecured() override {}
  void onRead(std::span<const char> data) override {
    if (answered_) {
      return;
    }
    switch (reader_.feed(data)) {
    case http::RequestReader::Status::Incomplete:
      return;
    case http::RequestReader::Status::Complete:
      answer(owner_.api_.handle(reader_.request(), remote_));
      return;
    case http::RequestReader::Status::Refused:
      logging::debug("admin request refused",
                     {{"client", remote_}, {"error", reader_.errorText()}});
      answer(errorResponse(reader_.errorStatus(), reader_.errorText()));
      return;
    }
  }
  void onEnd() override {
    if (!answered_) {
      finish();
    }
  }
  void onError(int) override { finish(); }
  void onDrained() override {
    if (answered_) {
      done(); // the whole answer reached the kernel
    }
  }
  void onTimer() override {
    if (!answered_) {
      answer(errorResponse(408, "no complete request within 10 s"));
      return;
    }
    finish(); // a client that does not read its answer loses it
  }

  void answer(const Response& response) {
    answered_ = true;
    std::string text = response.text();
    if (stream_->write(text) != 0) {
      finish();
      return;
    }
    if (stream_->pendingBytes() == 0) {
      done();
    }
    // Else the rest is queued (a long session list): onDrained closes once it is sent.
  }

  void done() {
    stream_->closeAfterFlush();
    stream_ = nullptr;
    finish();
  }

  void finish() {
    end();
    owner_.finished(this);
  }

  AdminServer& owner_;
  uv_loop_t* loop_;
  net::TcpStream* stream_ = nullptr;
  net::Timer* timer_ = nullptr;
  std::string remote_;
  http::RequestReader reader_;
  bool answered_ = false;
};

AdminServer::AdminServer(uv_loop_t* loop, Control& control, std::string token)
    : loop_(loop), api_(control, std::move(token)) {}

AdminServer::~AdminServer() { stop(); }

std::expected<int, std::string> AdminServer::start(const config::SocketAddress& address) {
  auto opened = net::Listener::open(loop_, address, this, /*shared=*/false);
  if (!opened) {
    return std::unexpected(opened.error());
  }
  listener_ = *opened;
  return listener_->port();
}

void AdminServer::stop() {
  if (listener_ != nullptr) {
    listener_->close();
    listener_ = nullptr;
  }
  for (auto& connection : connections_) {
    connection->end();
  }
  connections_.clear();
  finished_.clear();
}

void AdminServer::onConnection(net::Listener& listener) {
  finished_.clear(); // connections that ended during an earlier callback
  auto connection = std::make_unique<Connection>(*this, loop_);
  if (connections_.size() >= kMaxConnections) {
    // Accepted and closed at once: a flood of admin connections cannot hold descriptors.
    if (connection->start(listener.stream())) {
      connection->end();
    }
    return;
  }
  if (connection->start(listener.stream())) {
    connections_.push_back(std::move(connection));
  }
}

void AdminServer::finished(Connection* connection) {
  auto found = std::find_if(connections_.begin(), connections_.end(),
                            [&](const auto& owned) { return owned.get() == connection; });
  if (found != connections_.end()) {
    // Freed later: this runs inside the connection's own callback.
    finished_.push_back(std::move(*found));
    connections_.erase(found);
  }
}

} // namespace admin
