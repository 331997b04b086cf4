#!/usr/bin/env python3
"""Checks a running flagshare server with the stock Python gRPC tools, without flagshare's
proto files: health checking (grpc.health.v1) and server reflection (v1alpha, which the
Python client speaks), over mutual TLS with a client bundle.

    pip install grpcio grpcio-health-checking grpcio-reflection
    python3 scripts/third-party-client-check.py BUNDLE_DIR [ENDPOINT]
"""
import pathlib
import sys
import tomllib

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

bundle = pathlib.Path(sys.argv[1])
config = tomllib.loads((bundle / "client.toml").read_text())
endpoint = sys.argv[2] if len(sys.argv) > 2 else config["endpoint"]
target = endpoint.removeprefix("https://")
credentials = grpc.ssl_channel_credentials(
    root_certificates=(bundle / "ca.pem").read_bytes(),
    private_key=(bundle / "key.pem").read_bytes(),
    certificate_chain=(bundle / "cert.pem").read_bytes(),
)
options = [("grpc.ssl_target_name_override", config["server_name"])]
with grpc.secure_channel(target, credentials, options=options) as channel:
    health = health_pb2_grpc.HealthStub(channel)
    status = health.Check(health_pb2.HealthCheckRequest(service="flagshare.v1.Flags"), timeout=10)
    print("health flagshare.v1.Flags:", health_pb2.HealthCheckResponse.ServingStatus.Name(status.status))
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10)
    services = [service.name for response in responses for service in response.list_services_response.service]
    print("reflection services:", ", ".join(sorted(services)))
    ok = status.status == health_pb2.HealthCheckResponse.SERVING and "flagshare.v1.Flags" in services
    sys.exit(0 if ok else 1)
