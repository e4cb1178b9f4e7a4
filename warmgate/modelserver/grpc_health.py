"""The standard gRPC health service (`grpc.health.v1.Health`) beside the inference service.

Two services are known: "" (the server) and the model's name. Both are SERVING only while the
server is ready by the data plane's rule, the one `ServerReady` and `/v2/health/ready` answer: this
worker loaded and warmed the model, is not draining, and every other worker is ready too, so a
health check through any connection means the same. Any other name is NOT_FOUND (Check) or
SERVICE_UNKNOWN (Watch), as the health protocol says.

The status is computed when asked, not stored: the other workers' readiness lives in shared memory
that nobody announces changes of. `Watch` therefore looks every WATCH_POLL_S and sends each change;
once the worker drains it sends NOT_SERVING and ends the stream, so an open watch never holds the
drain for the whole graceful timeout.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from warmgate.modelserver.dataplane import WORKER_HEADER, ServerContext, server_not_ready_reason

# A watcher sees a change within this; reading the readiness bytes costs nothing.
WATCH_POLL_S = 0.25
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


class HealthServicer(health_pb2_grpc.HealthServicer):
    def __init__(self, context: ServerContext) -> None:
        self._context = context

    def _services(self) -> tuple[str, str]:
        return ("", self._context.model_name)

    def _status(self, service: str) -> Any:
        if service not in self._services():
            return None
        return SERVING if server_not_ready_reason(self._context) is None else NOT_SERVING

    def _tag(self, rpc: grpc.aio.ServicerContext[Any, Any]) -> None:
        rpc.set_trailing_metadata(((WORKER_HEADER, self._context.worker),))

    async def Check(
        self, request: health_pb2.HealthCheckRequest, rpc: grpc.aio.ServicerContext[Any, Any]
    ) -> health_pb2.HealthCheckResponse:
        self._tag(rpc)
        status = self._status(request.service)
        if status is None:
            known = " and ".join(map(repr, self._services()))
            await rpc.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}; known: {known}")
        return health_pb2.HealthCheckResponse(status=status)

    async def Watch(
        self, request: health_pb2.HealthCheckRequest, rpc: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        self._tag(rpc)
        last = None
        while True:
            status = self._status(request.service)
            status = SERVICE_UNKNOWN if status is None else status
            if status != last:
                await rpc.write(health_pb2.HealthCheckResponse(status=status))
                last = status
            if self._context.state.draining:
                return
            await asyncio.sleep(WATCH_POLL_S)
