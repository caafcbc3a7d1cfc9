#include "integration/process.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <mutex>
#include <set>
#include <sstream>
#include <stdexcept>
#include <thread>
#include <utility>

#ifndef SILOD_PATH
#error "SILOD_PATH must name the silod binary (set by tests/CMakeLists.txt)"
#endif

extern char** environ;

namespace silo::test {

namespace fs = std::filesystem;
using steady = std::chrono::steady_clock;
using std::chrono::milliseconds;

namespace {

[[noreturn]] void fail_errno(const std::string& what) {
  throw std::runtime_error(what + ": " + std::strerror(errno));
}

// RAII for a file descriptor.
class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() { reset(); }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }
  int release() { return std::exchange(fd_, -1); }
  void reset(int fd = -1) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = fd;
  }

 private:
  int fd_ = -1;
};

milliseconds remaining(steady::time_point deadline) {
  return std::max(milliseconds(0), std::chrono::duration_cast<milliseconds>(deadline - steady::now()));
}

int decode_status(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}

// waitpid() retried on EINTR. Returns the pid, 0 (WNOHANG, still running) or -1 (errno set).
pid_t wait_pid(pid_t pid, int* status, int flags) {
  for (;;) {
    const pid_t r = ::waitpid(pid, status, flags);
    if (r >= 0 || errno != EINTR) return r;
  }
}

// The environment for a child: ours, minus NOTIFY_SOCKET (a test must never notify the real service
// manager), plus `extra` (which wins).
std::vector<std::string> child_environment(const std::map<std::string, std::string>& extra) {
  std::map<std::string, std::string> env;
  for (char** e = environ; e && *e; ++e) {
    const std::string kv = *e;
    const auto eq = kv.find('=');
    if (eq == std::string::npos) continue;
    env[kv.substr(0, eq)] = kv.substr(eq + 1);
  }
  env.erase("NOTIFY_SOCKET");
  for (const auto& [k, v] : extra)
    env[k] = v;
  std::vector<std::string> out;
  out.reserve(env.size());
  for (const auto& [k, v] : env)
    out.push_back(k + "=" + v);
  return out;
}

std::vector<char*> c_strings(std::vector<std::string>& strings) {
  std::vector<char*> out;
  out.reserve(strings.size() + 1);
  for (auto& s : strings)
    out.push_back(s.data());
  out.push_back(nullptr);
  return out;
}

// fork + execve with stdin from /dev/null and stdout and stderr on `out_fd`, in a process group of its own
// (so kill(-pid) also reaches anything it starts). Everything that allocates happens before fork(): the
// child only makes async-signal-safe calls.
pid_t spawn(std::vector<std::string> argv, std::vector<std::string> env, int out_fd) {
  if (argv.empty()) throw std::invalid_argument("spawn: empty argv");
  std::vector<char*> c_argv = c_strings(argv);
  std::vector<char*> c_env = c_strings(env);
  Fd dev_null(::open("/dev/null", O_RDONLY | O_CLOEXEC));
  if (dev_null.get() < 0) fail_errno("open /dev/null");
  const pid_t parent = ::getpid();
  const std::string exec_failed = "spawn: cannot execute " + argv[0] + "\n";

  const pid_t pid = ::fork();
  if (pid < 0) fail_errno("fork");
  if (pid == 0) {
    // Die with the test process, so a crashed or killed test leaves no orphan behind. (The signal follows
    // the forking thread; the tests fork from their main thread.)
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(127);
    ::setpgid(0, 0);
    // Ignored signals and the signal mask survive exec: give the child a clean slate.
    for (int s : {SIGPIPE, SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGCHLD, SIGUSR1, SIGUSR2})
      ::signal(s, SIG_DFL);
    sigset_t none;
    ::sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    if (::dup2(dev_null.get(), STDIN_FILENO) < 0 || ::dup2(out_fd, STDOUT_FILENO) < 0 ||
        ::dup2(out_fd, STDERR_FILENO) < 0)
      ::_exit(127);
    ::execve(c_argv[0], c_argv.data(), c_env.data());
    [[maybe_unused]] auto ignored = ::write(STDERR_FILENO, exec_failed.data(), exec_failed.size());
    ::_exit(127);
  }
  ::setpgid(pid, pid);  // also here, so the group exists before spawn() returns (fails harmlessly after exec)
  return pid;
}

// SIGKILL for the process group of a spawned (not yet reaped) child, or the child alone if that fails.
void kill_group(pid_t pid) {
  if (::kill(-pid, SIGKILL) != 0) ::kill(pid, SIGKILL);
}

}  // namespace

// ---- files and directories ---------------------------------------------------------------------------

TempDir::TempDir(const std::string& prefix) {
  std::string pattern = "/tmp/" + prefix + "-XXXXXX";
  if (!::mkdtemp(pattern.data())) fail_errno("mkdtemp " + pattern);
  path_ = pattern;
}

TempDir::~TempDir() {
  if (path_.empty()) return;
  if (std::getenv("SILO_KEEP_TEST_DIRS")) {
    std::cerr << "silo::test: keeping " << path_ << "\n";
    return;
  }
  std::error_code ec;
  fs::remove_all(path_, ec);
}

std::string TempDir::write(const std::string& name, const std::string& text) const {
  const std::string full = (fs::path(path_) / name).string();
  write_file(full, text);
  return full;
}

void write_file(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  out.close();
  if (!out) throw std::runtime_error("cannot write " + path);
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return {};
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

bool wait_until(const std::function<bool()>& cond, milliseconds timeout) {
  const auto deadline = steady::now() + timeout;
  for (;;) {
    if (cond()) return true;
    if (steady::now() >= deadline) return cond();
    std::this_thread::sleep_for(std::min(milliseconds(10), remaining(deadline)));
  }
}

// ---- ports and configuration -------------------------------------------------------------------------

const std::string& loopback_host() {
  // 127.64.0.0/10 holds every pid (the kernel's PID_MAX_LIMIT is 2^22) and avoids the addresses others use
  // (127.0.0.1, Debian's 127.0.1.1, systemd-resolved's 127.0.0.53) and lo's broadcast 127.255.255.255.
  static const std::string host = [] {
    const auto pid = static_cast<unsigned>(::getpid()) & 0x3fffff;
    return "127." + std::to_string(64 + (pid >> 16)) + "." + std::to_string((pid >> 8) & 0xff) + "." +
           std::to_string(pid & 0xff);
  }();
  return host;
}

const std::string& hidden_loopback_host() {
  static const std::string host = [] {
    const auto pid = static_cast<unsigned>(::getpid()) & 0x3fffff;
    return "127." + std::to_string(128 + (pid >> 16)) + "." + std::to_string((pid >> 8) & 0xff) + "." +
           std::to_string(pid & 0xff);
  }();
  return host;
}

namespace {
std::mutex ports_mutex;
std::set<std::pair<std::string, int>> ports_handed_out;
}  // namespace

int free_port(const std::string& host_name) {
  const char* host = host_name.c_str();
  const bool v6 = std::strchr(host, ':') != nullptr;
  sockaddr_storage ss{};
  socklen_t len;
  if (v6) {
    auto* a = reinterpret_cast<sockaddr_in6*>(&ss);
    a->sin6_family = AF_INET6;
    if (::inet_pton(AF_INET6, host, &a->sin6_addr) != 1)
      throw std::invalid_argument(std::string("bad host ") + host);
    len = sizeof(sockaddr_in6);
  } else {
    auto* a = reinterpret_cast<sockaddr_in*>(&ss);
    a->sin_family = AF_INET;
    if (::inet_pton(AF_INET, host, &a->sin_addr) != 1)
      throw std::invalid_argument(std::string("bad host ") + host);
    len = sizeof(sockaddr_in);
  }
  // Ports handed out earlier may be unbound right now (their silod not started yet, or stopped for a
  // restart): the kernel could offer them again, so ask until it offers a new one.
  for (int attempt = 0; attempt < 1000; ++attempt) {
    Fd fd(::socket(v6 ? AF_INET6 : AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (fd.get() < 0) fail_errno("socket");
    sockaddr_storage bound = ss;
    socklen_t bound_len = len;
    if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&bound), bound_len) != 0)
      fail_errno(std::string("bind ") + host);
    if (::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&bound), &bound_len) != 0)
      fail_errno("getsockname");
    const int port = ntohs(v6 ? reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port
                              : reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
    std::lock_guard lock(ports_mutex);
    if (ports_handed_out.emplace(host_name, port).second) return port;
  }
  throw std::runtime_error("free_port: no new port on " + host_name + " after 1000 attempts");
}

std::string yaml_quote(const std::string& text) {
  std::string out = "\"";
  for (char c : text) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\t':
        out += "\\t";
        break;
      case '$':
        out += "$$";
        break;
      default:
        out += c;
    }
  }
  return out + "\"";
}

std::string silod_config(const SilodConfig& c) {
  const int silo_port = free_port();
  const int gateway_port = free_port();
  std::ostringstream y;
  y << "cluster:\n"
    << "  id: " << yaml_quote(c.cluster_id) << "\n"
    << "silo:\n"
    << "  name: " << yaml_quote(c.silo_name) << "\n"
    << "  listen: " << loopback_host() << ":" << silo_port << "\n"
    << "  threads: " << c.threads << "\n"
    << "  shutdown_timeout: " << c.shutdown_timeout << "\n"
    << "gateway:\n"
    << "  listen: " << loopback_host() << ":" << gateway_port << "\n"
    << "plugins:\n"
    << "  dir: " << yaml_quote(c.plugins_dir.empty() ? "plugins" : c.plugins_dir) << "\n"
    << "  load: [";
  for (std::size_t i = 0; i < c.load.size(); ++i)
    y << (i ? ", " : "") << yaml_quote(c.load[i]);
  y << "]\n"
    << "  required: " << (c.plugins_required ? "true" : "false") << "\n"
    << "logging:\n"
    << "  level: " << c.log_level << "\n";
  if (!c.log_file.empty()) y << "  file: " << yaml_quote(c.log_file) << "\n";
  y << c.extra;
  return y.str();
}

std::string silod_config(const std::string& plugins_dir, const std::vector<std::string>& load,
                         const std::string& log_level) {
  SilodConfig c;
  c.plugins_dir = plugins_dir;
  c.load = load;
  c.log_level = log_level;
  return silod_config(c);
}

// ---- one-shot commands -------------------------------------------------------------------------------

CommandResult run_command(const std::vector<std::string>& argv, milliseconds timeout,
                          const std::map<std::string, std::string>& extra_env) {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) fail_errno("pipe2");
  Fd read_end(fds[0]);
  Fd write_end(fds[1]);
  const pid_t pid = spawn(argv, child_environment(extra_env), write_end.get());
  write_end.reset();  // so the read end sees EOF once the child (and its children) exit

  CommandResult result{-1, {}, false};
  const auto deadline = steady::now() + timeout;
  auto kill_deadline = steady::time_point::max();  // after SIGKILL, stop reading soon even without EOF
  char buf[8192];
  for (;;) {
    auto limit = result.timed_out ? kill_deadline : deadline;
    pollfd p{read_end.get(), POLLIN, 0};
    const int r = ::poll(&p, 1, static_cast<int>(std::min(remaining(limit), milliseconds(1000)).count()));
    if (r < 0 && errno != EINTR) {
      kill_group(pid);
      wait_pid(pid, nullptr, 0);
      fail_errno("poll");
    }
    if (r > 0) {
      const ssize_t n = ::read(read_end.get(), buf, sizeof buf);
      if (n > 0) {
        result.output.append(buf, static_cast<std::size_t>(n));
        continue;
      }
      if (n == 0) break;  // EOF
      if (errno != EINTR && errno != EAGAIN) break;
      continue;
    }
    if (steady::now() < limit) continue;
    if (result.timed_out) break;  // killed, but something still holds the pipe
    result.timed_out = true;
    kill_group(pid);
    kill_deadline = steady::now() + milliseconds(1000);
  }
  int status = 0;
  if (wait_pid(pid, &status, 0) == pid) result.exit_code = decode_status(status);
  return result;
}

// ---- silod -------------------------------------------------------------------------------------------

SilodProcess::SilodProcess(const std::string& config_yaml, std::vector<std::string> extra_args, Env extra_env)
    : dir_("silod-test") {
  start(config_yaml, extra_args, extra_env);
}

SilodProcess::SilodProcess(const ConfigFn& make_config, std::vector<std::string> extra_args, Env extra_env)
    : dir_("silod-test") {
  start(make_config(dir_.path()), extra_args, extra_env);
}

void SilodProcess::start(const std::string& config_yaml, const std::vector<std::string>& extra_args,
                         const Env& extra_env) {
  config_path_ = dir_.write("silod.yaml", config_yaml);
  log_path_ = (fs::path(dir_.path()) / "output.log").string();
  notify_path_ = (fs::path(dir_.path()) / "notify.sock").string();

  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (notify_path_.size() >= sizeof(addr.sun_path))
    throw std::runtime_error("socket path too long: " + notify_path_);
  std::memcpy(addr.sun_path, notify_path_.c_str(), notify_path_.size() + 1);
  Fd sock(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (sock.get() < 0) fail_errno("socket(AF_UNIX)");
  if (::bind(sock.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0)
    fail_errno("bind " + notify_path_);

  Fd log(::open(log_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0644));
  if (log.get() < 0) fail_errno("open " + log_path_);

  std::vector<std::string> argv = {SILOD_PATH, "--config", config_path_};
  argv.insert(argv.end(), extra_args.begin(), extra_args.end());
  Env env = extra_env;
  env["NOTIFY_SOCKET"] = notify_path_;
  pid_ = spawn(std::move(argv), child_environment(env), log.get());
  notify_fd_ = sock.release();
}

SilodProcess::~SilodProcess() {
  if (pid_ > 0 && !reap(false)) {
    kill_group(pid_);  // the whole group: silod and anything it started
    reap(true);
  }
  if (notify_fd_ >= 0) ::close(notify_fd_);
}

bool SilodProcess::reap(bool block) {
  if (exit_code_ || pid_ <= 0) return true;
  int status = 0;
  const pid_t r = wait_pid(pid_, &status, block ? 0 : WNOHANG);
  if (r == 0) return false;
  exit_code_ = r == pid_ ? decode_status(status) : -1;  // -1: lost (ECHILD), should not happen
  return true;
}

void SilodProcess::drain(milliseconds wait) {
  if (notify_fd_ < 0) return;
  pollfd p{notify_fd_, POLLIN, 0};
  if (::poll(&p, 1, static_cast<int>(wait.count())) <= 0) return;
  std::vector<char> buf(64 * 1024);
  for (;;) {
    const ssize_t n = ::recv(notify_fd_, buf.data(), buf.size(), 0);
    if (n >= 0) {
      notifications_.emplace_back(buf.data(), static_cast<std::size_t>(n));
      continue;
    }
    if (errno == EINTR) continue;
    return;  // EAGAIN: nothing more pending
  }
}

bool SilodProcess::has_notification(const std::string& text) {
  drain(milliseconds(0));
  return std::any_of(notifications_.begin(), notifications_.end(),
                     [&](const std::string& n) { return n.find(text) != std::string::npos; });
}

bool SilodProcess::wait_notification(const std::string& text, milliseconds timeout) {
  const auto deadline = steady::now() + timeout;
  for (;;) {
    if (has_notification(text)) return true;
    // Exited: whatever it sent is already queued on the socket, so one more look settles it.
    if (reap(false)) return has_notification(text);
    if (steady::now() >= deadline) return false;
    drain(std::min(milliseconds(10), remaining(deadline)));
  }
}

bool SilodProcess::wait_ready(milliseconds timeout) {
  return wait_notification("READY=1", timeout);
}

std::vector<std::string> SilodProcess::notifications() {
  drain(milliseconds(0));
  return notifications_;
}

void SilodProcess::signal(int signo) {
  if (!reap(false)) ::kill(pid_, signo);  // never signal a reaped pid: it may belong to someone else now
}

std::optional<int> SilodProcess::wait_exit(milliseconds timeout) {
  const auto deadline = steady::now() + timeout;
  for (;;) {
    if (reap(false)) {
      drain(milliseconds(0));
      return exit_code_;
    }
    if (steady::now() >= deadline) return std::nullopt;
    drain(std::min(milliseconds(10), remaining(deadline)));
  }
}

bool SilodProcess::running() {
  return !reap(false);
}

std::string SilodProcess::log() const {
  return read_file(log_path_);
}

bool SilodProcess::wait_log(const std::string& text, milliseconds timeout) {
  return wait_until([&] { return log().find(text) != std::string::npos; }, timeout);
}

}  // namespace silo::test
