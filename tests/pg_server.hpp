#pragma once
// PostgreSQL for the tests that need one: they run under pg_virtualenv (tests/run.sh does), fail clearly
// without it, and the outage tests stop and start its server.

#include <sys/wait.h>

#include <cstdio>
#include <cstdlib>
#include <sstream>
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

/// The server of the PG* environment as pg_virtualenv makes it (a Debian cluster listening on PGPORT),
/// stopped and started with pg_ctlcluster. Started again on destruction, so a failing test never leaves
/// the database down for the tests after it.
class PgServer {
 public:
  PgServer() {
    const char* port = std::getenv("PGPORT");
    std::istringstream lines(run("pg_lsclusters --no-header"));
    for (std::string line; std::getline(lines, line);) {
      std::istringstream fields(line);  // Ver Cluster Port Status Owner Data-directory Log-file
      std::string version, name, cluster_port, status;
      fields >> version >> name >> cluster_port >> status;
      if (port && cluster_port == port && status.starts_with("online")) id_ = version + " " + name;
    }
  }
  ~PgServer() {
    if (down_) start();
  }
  PgServer(const PgServer&) = delete;
  PgServer& operator=(const PgServer&) = delete;

  /// False when the server on PGPORT is not a cluster pg_ctlcluster knows (not pg_virtualenv's).
  bool found() const { return !id_.empty(); }
  std::string describe() const { return "pg_ctlcluster " + (id_.empty() ? "(no cluster on PGPORT)" : id_); }
  bool stop() {
    down_ = true;
    return run_ok("pg_ctlcluster " + id_ + " stop -- -m fast");
  }
  bool start() {
    const bool ok = run_ok("pg_ctlcluster " + id_ + " start");
    if (ok) down_ = false;
    return ok;
  }
  /// What the last pg_ctlcluster printed (for failure messages).
  const std::string& last_output() const { return output_; }

 private:
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
