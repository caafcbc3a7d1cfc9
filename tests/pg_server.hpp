#pragma once
// PostgreSQL for the tests that need one: they run under pg_virtualenv (tests/run.sh does), fail clearly
// without it, and the outage tests stop and start its server.

#include <signal.h>
#include <sys/wait.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>

#include <catch2/catch.hpp>

namespace silo::test {

/// Fails the running test (never skips it) when the PG* environment names no PostgreSQL.
inline void require_postgres(const std::string& test_binary) {
  const char* host = std::getenv("PGHOST");
  if (!host || !*host) {
    FAIL(
        "PGHOST is unset: these tests need a PostgreSQL; run them under pg_virtualenv (tests/run.sh does; by "
        "hand: pg_virtualenv -t -- build/bin/"
        << test_binary << ")");
  }
}

/// The server of the PG* environment, stopped and started with pg_ctlcluster, for the outage tests. It only
/// ever touches pg_virtualenv's throwaway cluster: the constructor fails the test unless the cluster on
/// PGPORT is named "regress" and holds the `.by_pg_virtualenv` file that pg_virtualenv writes into the
/// configuration directory of the clusters it creates (and checks itself before dropping one), under
/// PG_CLUSTER_CONF_ROOT when it set one (`-t`, or not root) or /etc/postgresql. A developer's own server on
/// PGPORT is therefore never stopped. It also refuses when SILO_TEST_PARALLEL is set: ctest sets it on every
/// test that may run beside others (tests/CMakeLists.txt), and stopping the server under them would fail
/// them; tests that stop it are tagged [pg_outage] and run alone.
/// Started again on destruction, so a failing test never leaves the database down for the tests after it.
class PgServer {
 public:
  PgServer() {
    const std::string refusal = identify();
    // An exception, not Catch's FAIL: the chaos driver (no Catch session) uses this class too, and a test
    // case fails on it with the same message.
    if (!refusal.empty()) throw std::runtime_error("PgServer: will not stop PostgreSQL: " + refusal);
  }
  ~PgServer() {
    if (down_) start();
  }
  PgServer(const PgServer&) = delete;
  PgServer& operator=(const PgServer&) = delete;

  /// True: the constructor throws otherwise (kept for the callers' REQUIREs).
  bool found() const { return !id_.empty(); }
  std::string describe() const { return "pg_ctlcluster " + (id_.empty() ? "(no cluster on PGPORT)" : id_); }
  bool stop() {
    if (id_.empty()) return false;
    down_ = true;
    return run_ok("pg_ctlcluster " + id_ + " stop -- -m fast");
  }
  bool start() {
    if (id_.empty()) return false;
    const bool ok = run_ok("pg_ctlcluster " + id_ + " start");
    if (ok) down_ = false;
    return ok;
  }
  /// What the last pg_ctlcluster printed (for failure messages).
  const std::string& last_output() const { return output_; }

 private:
  // Sets id_ to "VERSION regress" and returns "", or returns why this server must not be stopped.
  std::string identify() {
    if (const char* parallel = std::getenv("SILO_TEST_PARALLEL"); parallel && *parallel) {
      return "this test may run beside others (SILO_TEST_PARALLEL is set), which need the server up: tag "
             "it [pg_outage] so that ctest runs it alone (tests/CMakeLists.txt)";
    }
    const char* port = std::getenv("PGPORT");
    if (!port || !*port) return "PGPORT is unset: run under pg_virtualenv";
    // pg_lsclusters' Status column is not used: it comes from the external pid file
    // /var/run/postgresql/VERSION-regress.pid, which every pg_virtualenv -t cluster on the machine shares
    // (they are all VERSION/regress) and which pg_ctlcluster deletes when any of them stops. Whether our
    // server runs is read from its own data directory instead.
    std::string found_version, found_name, found_data;
    std::istringstream lines(run("pg_lsclusters --no-header"));
    for (std::string line; std::getline(lines, line);) {
      std::istringstream fields(line);  // Ver Cluster Port Status Owner Data-directory Log-file
      std::string version, name, cluster_port, status, owner, data;
      fields >> version >> name >> cluster_port >> status >> owner >> data;
      if (cluster_port == port) {
        found_version = version;
        found_name = name;
        found_data = data;
      }
    }
    if (found_name.empty())
      return std::string("pg_lsclusters lists no cluster on PGPORT=") + port + ": run under pg_virtualenv";
    const std::string cluster = found_version + " " + found_name;
    const char* root = std::getenv("PG_CLUSTER_CONF_ROOT");
    const std::string conf_root = root && *root ? root : "/etc/postgresql";
    const std::string marker = conf_root + "/" + found_version + "/" + found_name + "/.by_pg_virtualenv";
    if (found_name != "regress" || !std::filesystem::exists(marker)) {
      return "the cluster on PGPORT=" + std::string(port) + " (" + cluster +
             ") is not a throwaway cluster of pg_virtualenv (no " + marker + "): run under pg_virtualenv -t";
    }
    // postmaster.pid: pid, data directory, start time, port, ...
    std::ifstream pid_file(found_data + "/postmaster.pid");
    std::string pid, data, started, pid_port;
    std::getline(pid_file, pid);
    std::getline(pid_file, data);
    std::getline(pid_file, started);
    std::getline(pid_file, pid_port);
    if (pid.empty() || ::kill(std::stoi(pid), 0) != 0 || pid_port != port) {
      return "cluster " + cluster + " (" + found_data + ") is not running on PGPORT=" + port +
             " (postmaster.pid: pid '" + pid + "', port '" + pid_port + "')";
    }
    id_ = found_version + " " + found_name;
    return "";
  }

  std::string run(const std::string& command) {
    output_.clear();
    status_ = -1;
    if (FILE* f = ::popen((command + " 2>&1").c_str(), "r")) {
      char buf[512];
      while (std::fgets(buf, sizeof buf, f))
        output_ += buf;
      status_ = ::pclose(f);
    }
    return output_;
  }
  bool run_ok(const std::string& command) {
    run(command);
    return status_ != -1 && WIFEXITED(status_) && WEXITSTATUS(status_) == 0;
  }

  std::string id_;
  std::string output_;
  int status_ = -1;
  bool down_ = false;
};

}  // namespace silo::test
