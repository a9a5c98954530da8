// A libuv timer with one owner: the owner calls close(), the loop frees it afterwards.
#pragma once

#include <uv.h>

#include <chrono>
#include <cstdint>

namespace net {

class TimerHandler {
public:
  virtual void onTimer() = 0;

protected:
  ~TimerHandler() = default;
};

class Timer {
public:
  static Timer* create(uv_loop_t* loop, TimerHandler* handler) {
    auto* timer = new Timer(handler);
    uv_timer_init(loop, &timer->timer_);
    timer->timer_.data = timer;
    return timer;
  }

  void start(std::chrono::milliseconds delay) {
    uv_timer_start(&timer_, onFire, static_cast<std::uint64_t>(delay.count()), 0);
  }
  void stop() { uv_timer_stop(&timer_); }
  // Milliseconds on the loop's clock, as timers see it.
  std::uint64_t now() const { return uv_now(timer_.loop); }

  // Stops the timer for good; the loop frees it after its close callback. Idempotent.
  void close() {
    handler_ = nullptr;
    if (uv_is_closing(reinterpret_cast<uv_handle_t*>(&timer_)) == 0) {
      uv_close(reinterpret_cast<uv_handle_t*>(&timer_),
               [](uv_handle_t* handle) noexcept { delete static_cast<Timer*>(handle->data); });
    }
  }

private:
  explicit Timer(TimerHandler* handler) : handler_(handler) {}
  ~Timer() = default;

  static void onFire(uv_timer_t* handle) noexcept {
    auto* timer = static_cast<Timer*>(handle->data);
    if (timer->handler_ != nullptr) {
      timer->handler_->onTimer();
    }
  }

  uv_timer_t timer_{};
  TimerHandler* handler_;
};

} // namespace net
