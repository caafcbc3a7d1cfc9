#include "tcp_proxy.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <memory>
#include <stdexcept>
#include <vector>

namespace silo::test {

namespace {

sockaddr_in endpoint(const std::string& host, int port) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<std::uint16_t>(port));
  if (::inet_pton(AF_INET, host.c_str(), &a.sin_addr) != 1) throw std::runtime_error("bad host " + host);
  return a;
}

bool write_all(int fd, const char* data, std::size_t n) {
  while (n > 0) {
    const ssize_t w = ::send(fd, data, n, MSG_NOSIGNAL);
    if (w <= 0) return false;
    data += w;
    n -= static_cast<std::size_t>(w);
  }
  return true;
}

struct Pair {
  int client = -1, upstream = -1;
  std::string from_upstream;  // bytes of an incomplete HTTP/2 frame (withholding mode)
  ~Pair() {
    if (client >= 0) ::close(client);
    if (upstream >= 0) ::close(upstream);
  }
};

}  // namespace

TcpProxy::TcpProxy(std::string listen_host, int listen_port, std::string upstream_host, int upstream_port)
    : listen_host_(std::move(listen_host)),
      upstream_host_(std::move(upstream_host)),
      upstream_port_(upstream_port) {
  listen_fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
  const int one = 1;
  ::setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in a = endpoint(listen_host_, listen_port);
  if (::bind(listen_fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(listen_fd_, 16) != 0) {
    ::close(listen_fd_);
    throw std::runtime_error("proxy: cannot listen on " + listen_host_ + ":" + std::to_string(listen_port) +
                             ": " + std::strerror(errno));
  }
  socklen_t len = sizeof a;
  ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&a), &len);
  port_ = ntohs(a.sin_port);
  thread_ = std::thread([this] { run(); });
}

TcpProxy::~TcpProxy() {
  stop_ = true;
  thread_.join();
  if (listen_fd_ >= 0) ::close(listen_fd_);
}

void TcpProxy::run() {
  std::vector<std::unique_ptr<Pair>> pairs;
  char buf[64 * 1024];
  while (!stop_) {
    if (cut_) {
      pairs.clear();
      if (listen_fd_ >= 0) ::close(listen_fd_);
      listen_fd_ = -1;
    }
    std::vector<pollfd> fds;
    if (listen_fd_ >= 0) fds.push_back({listen_fd_, POLLIN, 0});
    for (auto& p : pairs) {
      fds.push_back({p->client, POLLIN, 0});
      fds.push_back({p->upstream, POLLIN, 0});
    }
    if (::poll(fds.data(), fds.size(), 20) <= 0) continue;
    const std::size_t polled = pairs.size();  // an accepted pair joins the next poll
    std::size_t i = 0;
    if (listen_fd_ >= 0) {
      if (fds[0].revents & POLLIN) {
        auto p = std::make_unique<Pair>();
        p->client = ::accept(listen_fd_, nullptr, nullptr);
        p->upstream = ::socket(AF_INET, SOCK_STREAM, 0);
        sockaddr_in a = endpoint(upstream_host_, upstream_port_);
        const int one = 1;
        ::setsockopt(p->client, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        ::setsockopt(p->upstream, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (p->client >= 0 && ::connect(p->upstream, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0) {
          ++accepted_;
          pairs.push_back(std::move(p));
        }
      }
      i = 1;
    }
    std::vector<Pair*> closed;
    for (std::size_t k = 0; k < polled; ++k, i += 2) {
      Pair& p = *pairs[k];
      // Client -> upstream.
      if (fds[i].revents & (POLLIN | POLLHUP | POLLERR)) {
        const ssize_t n = ::recv(p.client, buf, sizeof buf, 0);
        if (n <= 0 || (!blackhole_ && !write_all(p.upstream, buf, static_cast<std::size_t>(n)))) {
          closed.push_back(&p);
          continue;
        }
      }
      // Upstream -> client.
      if (fds[i + 1].revents & (POLLIN | POLLHUP | POLLERR)) {
        const ssize_t n = ::recv(p.upstream, buf, sizeof buf, 0);
        if (n <= 0) {
          closed.push_back(&p);
          continue;
        }
        if (blackhole_) continue;
        if (!withhold_) {
          if (!write_all(p.client, buf, static_cast<std::size_t>(n))) closed.push_back(&p);
          continue;
        }
        // Forward whole HTTP/2 frames except HEADERS (1), DATA (0) and CONTINUATION (9). The server side of
        // h2c starts directly with frames (no preface).
        p.from_upstream.append(buf, static_cast<std::size_t>(n));
        std::size_t at = 0;
        bool ok = true;
        while (ok && p.from_upstream.size() - at >= 9) {
          const auto* h = reinterpret_cast<const unsigned char*>(p.from_upstream.data() + at);
          const std::size_t len = (std::size_t(h[0]) << 16) | (std::size_t(h[1]) << 8) | h[2];
          if (p.from_upstream.size() - at < 9 + len) break;
          const unsigned type = h[3];
          if (type == 0 || type == 1 || type == 9)
            ++withheld_;
          else
            ok = write_all(p.client, p.from_upstream.data() + at, 9 + len);
          at += 9 + len;
        }
        p.from_upstream.erase(0, at);
        if (!ok) closed.push_back(&p);
      }
    }
    for (Pair* c : closed)
      std::erase_if(pairs, [c](const auto& p) { return p.get() == c; });
  }
}

}  // namespace silo::test
