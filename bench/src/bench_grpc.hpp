#pragma once
// bench_grpc's two halves: the clients (bench_grpc_clients.cpp) and the raw servers (bench_grpc_servers.cpp).

#include <string>

#include "args.hpp"

namespace bench {
/// stream-server: silo.gateway.Gateway/Connect answered on gRPC's threads, each Call's payload echoed back.
int stream_server(const Args& args);
/// unary-server: any unary method echoed by an async generic service, one completion queue per thread.
int unary_server(const Args& args);
}  // namespace bench
