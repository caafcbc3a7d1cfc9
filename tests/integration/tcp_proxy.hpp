#pragma once
// A TCP proxy on loopback for tests that need a network that misbehaves: it forwards bytes between a
// client and an upstream, and on command withholds the upstream's HTTP/2 HEADERS/DATA frames (a gateway
// whose answer never arrives), drops everything (a partition: connections stay open, nothing passes), or
// cuts every connection. One thread, poll(); bounded by the test's lifetime.

#include <atomic>
#include <chrono>
#include <string>
#include <thread>

namespace silo::test {

class TcpProxy {
 public:
  /// Listens on listen_host:listen_port (0: any free port) and forwards to upstream_host:upstream_port.
  TcpProxy(std::string listen_host, int listen_port, std::string upstream_host, int upstream_port);
  ~TcpProxy();
  TcpProxy(const TcpProxy&) = delete;
  TcpProxy& operator=(const TcpProxy&) = delete;

  int port() const { return port_; }
  std::string address() const { return listen_host_ + ":" + std::to_string(port_); }

  /// Upstream -> client: forward HTTP/2 control frames (SETTINGS, PING, WINDOW_UPDATE...) but drop
  /// HEADERS, DATA and CONTINUATION frames, so the client never sees a response (nor response headers).
  void withhold_responses(bool on) { withhold_.store(on); }
  /// Drop every byte in both directions (a partition).
  void blackhole(bool on) { blackhole_.store(on); }
  /// Close every connection now and refuse new ones.
  void cut() { cut_.store(true); }
  /// Response frames withheld so far.
  int withheld() const { return withheld_.load(); }
  /// Connections accepted so far.
  int accepted() const { return accepted_.load(); }

 private:
  void run();

  std::string listen_host_;
  std::string upstream_host_;
  int upstream_port_;
  int listen_fd_ = -1;
  int port_ = 0;
  std::atomic<bool> withhold_{false}, blackhole_{false}, cut_{false}, stop_{false};
  std::atomic<int> withheld_{0}, accepted_{0};
  std::thread thread_;
};

}  // namespace silo::test
