#!/usr/bin/python3
"""A plain-gRPC Python client of the iot sample, used by tests/integration/gateway.test.cpp.

Generates the Python stubs of iot.proto (and silo/options.proto, which it imports) into a temporary
directory with protoc and grpc_python_plugin, calls one iot.Thermostat grain through a silo gateway, and
prints its final status on one line:  <id> <current_celsius> <target_celsius> <readings>
(doubles in repr() form, so they round-trip exactly).

usage: iot_client.py --source-dir DIR --gateway HOST:PORT --id THERMOSTAT
                     [--target CELSIUS] [--reading CELSIUS ...]
A failed call prints "error <CODE> <message>" and exits with status 3.
"""

import argparse
import importlib
import os
import subprocess
import sys
import tempfile

PROTOC = "/usr/bin/protoc"
GRPC_PLUGIN = "/usr/bin/grpc_python_plugin"


def generate(source_dir, out_dir):
    """Runs protoc; returns the imported (iot_pb2, iot_pb2_grpc) modules."""
    iot_dir = os.path.join(source_dir, "plugins", "iot")
    proto_dir = os.path.join(source_dir, "proto")
    subprocess.run(
        [PROTOC, "-I", iot_dir, "-I", proto_dir, "--python_out=" + out_dir, "--grpc_out=" + out_dir,
         "--plugin=protoc-gen-grpc=" + GRPC_PLUGIN, "iot.proto", "silo/options.proto"],
        check=True)
    # iot_pb2 does "from silo import options_pb2": make DIR/silo a regular package so that no other
    # "silo" on sys.path can shadow it.
    open(os.path.join(out_dir, "silo", "__init__.py"), "a").close()
    sys.path.insert(0, out_dir)
    return importlib.import_module("iot_pb2"), importlib.import_module("iot_pb2_grpc")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source-dir", required=True)
    parser.add_argument("--gateway", required=True)
    parser.add_argument("--id", required=True)
    parser.add_argument("--target", type=float)
    parser.add_argument("--reading", type=float, action="append", default=[])
    parser.add_argument("--timeout", type=float, default=10.0)
    args = parser.parse_args()

    import grpc  # after argparse, so that --help works without grpcio

    with tempfile.TemporaryDirectory(prefix="silo-py-") as out_dir:
        iot_pb2, iot_pb2_grpc = generate(args.source_dir, out_dir)
        metadata = (("silo-key", args.id),)
        with grpc.insecure_channel(args.gateway) as channel:
            stub = iot_pb2_grpc.ThermostatStub(channel)
            try:
                if args.target is not None:
                    stub.SetTarget(iot_pb2.Target(celsius=args.target), metadata=metadata,
                                   timeout=args.timeout)
                for celsius in args.reading:
                    stub.ReportReading(iot_pb2.Reading(celsius=celsius), metadata=metadata,
                                       timeout=args.timeout)
                status = stub.GetStatus(iot_pb2.StatusRequest(), metadata=metadata, timeout=args.timeout)
            except grpc.RpcError as e:
                print("error", e.code().name, e.details())
                return 3
    print(status.id, repr(status.current_celsius), repr(status.target_celsius), status.readings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
