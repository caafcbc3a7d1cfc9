#!/usr/bin/env bash
# Installs every Debian 12 package silo needs to build, test and run. Idempotent: when all packages are
# present it prints nothing and touches nothing. Needs root (or sudo) only when something is missing.
set -euo pipefail

packages=(
  # toolchain
  build-essential cmake ninja-build ccache pkg-config git clang-format
  # libraries (see docs/ARCHITECTURE.md, "Dependencies")
  libboost-dev libboost-filesystem-dev
  libgrpc++-dev libprotobuf-dev protobuf-compiler protobuf-compiler-grpc libprotoc-dev
  libpqxx-dev libyaml-cpp-dev libspdlog-dev libfmt-dev
  # tests: Catch2 v2, a throwaway PostgreSQL, the Python gRPC client test, systemd-analyze
  catch2 postgresql postgresql-common python3 python3-grpcio python3-protobuf systemd
  # handy for operators and tests
  procps iproute2
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "install-deps: installing ${#missing[@]} package(s): ${missing[*]}"
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "install-deps: run as root or install sudo" >&2; exit 1; }
  sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
# Refresh the package lists only when they are missing or older than a day.
if [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -mmin -1440 2>/dev/null | head -1)" ]; then
  $sudo apt-get update -qq
fi
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "install-deps: done"
