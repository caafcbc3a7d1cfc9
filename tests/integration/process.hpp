#pragma once
// Test harness for integration tests that run real processes: temporary directories, free ports, a silod
// child process with a private sd_notify socket, and one-shot commands with captured output.
//
// Everything here is synchronous and single-threaded; children are always reaped (no zombies) and are
// killed by the kernel if the test process dies (PR_SET_PDEATHSIG), so no orphans survive a crashed test.

#include <sys/types.h>

#include <chrono>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace silo::test {

/// A fresh directory under /tmp, removed with its contents on destruction unless the environment variable
/// SILO_KEEP_TEST_DIRS is set (its path is then printed to stderr, for post-mortems).
class TempDir {
 public:
  explicit TempDir(const std::string& prefix = "silo-test");
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::string& path() const { return path_; }
  /// Writes `text` to path()/name (replacing it) and returns the full path.
  std::string write(const std::string& name, const std::string& text) const;

 private:
  std::string path_;
};

/// Writes `text` to `path`, replacing the file. Throws std::runtime_error on failure.
void write_file(const std::string& path, const std::string& text);
/// The whole content of `path`; empty if it does not exist.
std::string read_file(const std::string& path);

/// The loopback address of this test process: 127.64.0.0 + its pid (pids fit in 22 bits), so that no two
/// test processes running at once (`ctest -j`) share an address. Outgoing loopback connections take their
/// source address from 127.0.0.1 (the route's `src`), so nothing but this process's own silods binds here.
const std::string& loopback_host();
/// A second address of this process, 127.128.0.0 + its pid: for silods that listen behind a proxy, which
/// listens on loopback_host() at the same port and is what their peers are told.
const std::string& hidden_loopback_host();

/// A TCP port that was free a moment ago on `host` (bind port 0, read it back, close), and never handed out
/// before by this process. On loopback_host() that makes it a reservation without a race: only this
/// process's silods bind there, each on ports it was handed, so a port stays free until its silod binds it,
/// and a silod restarted on its old ports can only collide with its own previous incarnation.
int free_port(const std::string& host = loopback_host());

/// Quotes `text` as a YAML double-quoted scalar, with "$" doubled for silod's ${VAR} expansion.
std::string yaml_quote(const std::string& text);

/// Inputs of silod_config(). The defaults make a small, fast silo.
struct SilodConfig {
  std::string plugins_dir;          // plugins.dir (absolute, or relative to the config file)
  std::vector<std::string> load;    // plugins.load: names or .so paths
  bool plugins_required = false;    // plugins.required
  std::string log_level = "info";   // logging.level
  std::string log_file;             // logging.file; empty = stderr
  std::string cluster_id = "test";  // cluster.id
  std::string silo_name = "test-silo";
  unsigned threads = 2;  // silo.threads
  std::string shutdown_timeout = "5s";
  std::string extra;  // appended verbatim (more top-level sections)
};

/// A minimal valid silod YAML configuration: silo.listen and gateway.listen on fresh free ports of
/// loopback_host(), and the plugins and logging settings of `c`.
std::string silod_config(const SilodConfig& c);
/// Shorthand for the common case.
std::string silod_config(const std::string& plugins_dir, const std::vector<std::string>& load,
                         const std::string& log_level = "info");

struct CommandResult {
  int exit_code;       // exit status, 128+signal if killed by a signal (also on timeout: 128+SIGKILL)
  std::string output;  // stdout and stderr, interleaved as written
  bool timed_out = false;
};

/// Runs argv (argv[0] is a path; no shell, no PATH lookup) with stdin from /dev/null, capturing stdout and
/// stderr. Its process group is killed with SIGKILL after `timeout`.
CommandResult run_command(const std::vector<std::string>& argv, std::chrono::milliseconds timeout,
                          const std::map<std::string, std::string>& extra_env = {});

/// A silod child process (SILOD_PATH of the build) with its own directory holding the configuration
/// (silod.yaml), the sd_notify socket (notify.sock, passed as NOTIFY_SOCKET) and the captured stdout and
/// stderr (output.log).
class SilodProcess {
 public:
  using Env = std::map<std::string, std::string>;
  /// Builds the configuration text from the process directory, for configs that name files in it.
  using ConfigFn = std::function<std::string(const std::string& dir)>;

  explicit SilodProcess(const std::string& config_yaml, std::vector<std::string> extra_args = {},
                        Env extra_env = {});
  explicit SilodProcess(const ConfigFn& make_config, std::vector<std::string> extra_args = {},
                        Env extra_env = {});
  /// SIGKILLs and reaps a process still running.
  ~SilodProcess();
  SilodProcess(const SilodProcess&) = delete;
  SilodProcess& operator=(const SilodProcess&) = delete;

  /// True once a notification containing "READY=1" arrived; false on timeout or if the process exited
  /// without sending one.
  bool wait_ready(std::chrono::milliseconds timeout);
  /// Waits until some notification contains `text` (or the process exited / the timeout passed).
  bool wait_notification(const std::string& text, std::chrono::milliseconds timeout);
  /// Every datagram received so far, in order (reads those pending on the socket first).
  std::vector<std::string> notifications();
  bool has_notification(const std::string& text);

  /// Sends `signo` to the process, unless it was already reaped.
  void signal(int signo);
  /// The exit code (128+signal if killed by one), or nullopt if still running after `timeout`.
  std::optional<int> wait_exit(std::chrono::milliseconds timeout);
  bool running();

  /// stdout and stderr captured so far.
  std::string log() const;
  /// Polls log() until it contains `text`.
  bool wait_log(const std::string& text, std::chrono::milliseconds timeout);

  pid_t pid() const { return pid_; }
  const std::string& dir() const { return dir_.path(); }
  const std::string& config_path() const { return config_path_; }
  const std::string& log_path() const { return log_path_; }

 private:
  void start(const std::string& config_yaml, const std::vector<std::string>& extra_args,
             const Env& extra_env);
  void drain(std::chrono::milliseconds wait);  // reads pending datagrams, waiting up to `wait` for the first
  bool reap(bool block);                       // true once the child has been reaped

  TempDir dir_;
  std::string config_path_;
  std::string log_path_;
  std::string notify_path_;
  int notify_fd_ = -1;
  pid_t pid_ = -1;
  std::optional<int> exit_code_;
  std::vector<std::string> notifications_;
};

/// Polls `cond` every few milliseconds until it returns true or `timeout` passes; returns the last result.
bool wait_until(const std::function<bool()>& cond, std::chrono::milliseconds timeout);

}  // namespace silo::test
