"""A fake Open Inference Protocol model server that misbehaves on purpose, for fault tests.

One behaviour per server, chosen by name (see BEHAVIOURS). The model is `demo`; when it answers
properly, output0 = 2 * input + 1 (FP32, the shape of the first input). It speaks OIP REST:
/v2/health/ready, /v2/health/live, /v2/models/demo/ready, GET /v2/models/demo (metadata) and
POST /v2/models/demo/infer.

In-process, with pytest-aiohttp::

    server = await aiohttp_server(make_app(Faults("shape-strings")))

As a real process (the memory case needs one: the process itself grows), from the repository
root or by path; it prints one line with its URL and pid once it listens::

    python -m tests.support.faultserver --behaviour hang --port 0
    faultserver hang listening on http://127.0.0.1:41234 pid 5678

`fault_server_command(...)` builds that command for `warmgate run -- ...` tests. It imports only
the standard library and aiohttp, so it runs as a script too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

MODEL = "demo"
OUTPUT = "output0"
SCRIPT = str(Path(__file__).resolve())
# More than warmgate reads from one answer (64 MiB).
DEFAULT_OVERSIZE_BYTES = 65 * 1024 * 1024

# A malformed answer: (batch size, input shape, output data) -> body of a 200 answer.
Malformed = Callable[[int, list[int], list[float]], bytes]


def _answer(output: dict[str, Any]) -> bytes:
    return json.dumps({"model_name": MODEL, "outputs": [output]}).encode()


def _output(shape: Any, data: Any, datatype: Any = "FP32") -> bytes:
    return _answer({"name": OUTPUT, "datatype": datatype, "shape": shape, "data": data})


def _raw(body: bytes, placeholder: str, token: bytes) -> bytes:
    """Put a token JSON writers refuse (NaN, a 5,001-digit integer) where a placeholder string is."""
    return body.replace(json.dumps(placeholder).encode(), token)


def _deep(levels: int) -> bytes:
    return b'{"outputs": ' + b"[" * levels + b"]" * levels + b"}"


# Name -> (how the answer is malformed, what it sends). Every one must fail the gate.
MALFORMED: dict[str, Malformed] = {
    "not-json": lambda b, s, d: b"<html><body>502 Bad Gateway</body></html>",
    "not-object": lambda b, s, d: json.dumps([{"name": OUTPUT, "shape": s, "data": d}]).encode(),
    "error-field": lambda b, s, d: b'{"error": "CUDA error: out of memory"}',
    "no-outputs": lambda b, s, d: b'{"model_name": "demo", "outputs": []}',
    "shape-strings": lambda b, s, d: _output([str(x) for x in s], d),
    "shape-floats": lambda b, s, d: _output([float(x) for x in s], d),
    "shape-negative": lambda b, s, d: _output([-1, *s[1:]], d),
    "shape-bools": lambda b, s, d: _output([True] * len(s), d),
    "shape-nested": lambda b, s, d: _output([s], d),
    "shape-huge": lambda b, s, d: _output([2**64, *s[1:]], d),
    "shape-nan": lambda b, s, d: _raw(_output(["NAN", *s[1:]], d), "NAN", b"NaN"),
    "data-length": lambda b, s, d: _output(s, d[:-1]),
    "datatype-unknown": lambda b, s, d: _output(s, d, "FLOAT32"),
    "datatype-mismatch": lambda b, s, d: _output(s, [str(x) for x in d], "INT32"),
    "integer-nan": lambda b, s, d: _raw(_output(s, ["NAN", *[0] * (len(d) - 1)], "INT64"), "NAN", b"NaN"),
    "huge-integer": lambda b, s, d: _raw(_output(s, ["HUGE", *d[1:]]), "HUGE", b"1" + b"0" * 5000),
    "deep": lambda b, s, d: _deep(100_000),
    "non-utf8": lambda b, s, d: _output(s, d).replace(b'"output0"', b'"output\xff\xfe"', 1),
    # Well-formed, but for another batch: the server did not run the shape it was sent.
    "wrong-batch": lambda b, s, d: _output([b + 1, *s[1:]], d + d[: len(d) // max(b, 1)]),
}  # fmt: skip

BEHAVIOURS: dict[str, str] = {
    "ok": "answers properly",
    "hang": "inference requests are never answered",
    "reset": "inference requests get their connection reset",
    "oversized": "a 200 answer larger than warmgate reads (streamed, no Content-Length)",
    "flapping": "readiness alternates between 200 and 503 every --flap-period seconds",
    "slow-start": "not ready until --ready-after seconds after start",
    "memory-growth": "every inference request keeps --grow-mb MiB of touched memory",
    "unknown-model": "the server is up, but answers 404 'unknown model' for the model",
    **{name: "a malformed 200 answer" for name in MALFORMED},
}


@dataclass
class Faults:
    behaviour: str = "ok"
    ready_after_s: float = 0.0
    flap_period_s: float = 0.5
    grow_bytes: int = 16 * 1024 * 1024
    oversize_bytes: int = DEFAULT_OVERSIZE_BYTES
    # What the server did, for the tests.
    infer_calls: int = 0
    retained: list[bytes] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        if self.behaviour not in BEHAVIOURS:
            raise ValueError(f"unknown behaviour {self.behaviour!r}; one of {', '.join(BEHAVIOURS)}")

    def ready(self) -> bool:
        elapsed = time.monotonic() - self.started
        if self.behaviour == "slow-start":
            return elapsed >= self.ready_after_s
        if self.behaviour == "flapping":
            return int(elapsed / self.flap_period_s) % 2 == 0
        return True


def make_app(faults: Faults) -> web.Application:
    async def server_ready(_request: web.Request) -> web.Response:
        return web.Response(text="") if faults.ready() else web.Response(status=503, text="not ready")

    async def live(_request: web.Request) -> web.Response:
        return web.Response(text="")

    def unknown_model() -> web.Response:
        message = f"Request for unknown model: '{MODEL}' is not found"
        return web.json_response({"error": message}, status=404)

    async def model_ready(request: web.Request) -> web.Response:
        if faults.behaviour == "unknown-model":
            return unknown_model()
        return await server_ready(request)

    async def metadata(_request: web.Request) -> web.Response:
        if faults.behaviour == "unknown-model":
            return unknown_model()
        inputs = [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}]
        outputs = [{"name": OUTPUT, "datatype": "FP32", "shape": [-1, 4]}]
        return web.json_response(
            {"name": MODEL, "platform": "faultserver", "inputs": inputs, "outputs": outputs}
        )

    async def infer(request: web.Request) -> web.StreamResponse:
        faults.infer_calls += 1
        behaviour = faults.behaviour
        if behaviour == "unknown-model":
            return unknown_model()
        if behaviour == "hang":
            await asyncio.Event().wait()
        if behaviour == "reset":
            assert request.transport is not None
            request.transport.abort()
            return web.Response()
        document = await request.json()
        first = document["inputs"][0]
        shape = [int(d) for d in first["shape"]]
        data = [2.0 * float(x) + 1.0 for x in first["data"]]
        batch = shape[0] if shape else 0
        if behaviour == "oversized":
            return await _stream_oversized(request, faults.oversize_bytes)
        if behaviour == "memory-growth":
            # Filled, not just allocated: untouched pages do not count in RSS.
            faults.retained.append(b"\x01" * faults.grow_bytes)
        malformed = MALFORMED.get(behaviour)
        if malformed is not None:
            return web.Response(body=malformed(batch, shape, data), content_type="application/json")
        return web.Response(body=_output(shape, data), content_type="application/json")

    app = web.Application(client_max_size=256 * 1024 * 1024)
    app.router.add_get("/v2/health/ready", server_ready)
    app.router.add_get("/v2/health/live", live)
    app.router.add_get(f"/v2/models/{MODEL}/ready", model_ready)
    app.router.add_get(f"/v2/models/{MODEL}", metadata)
    app.router.add_post(f"/v2/models/{MODEL}/infer", infer)
    return app


async def _stream_oversized(request: web.Request, size: int) -> web.StreamResponse:
    """A valid-looking answer that never stops where a reader would like it to."""
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    await response.prepare(request)
    head = b'{"model_name": "demo", "outputs": [{"name": "output0", "shape": [1], "data": ["'
    await response.write(head)
    chunk = b"x" * (1024 * 1024)
    sent = len(head)
    try:
        while sent < size:
            await response.write(chunk)
            sent += len(chunk)
        await response.write(b'"]}]}')
        await response.write_eof()
    except (ConnectionError, RuntimeError):
        pass  # the client stopped reading: what the test wants
    return response


def fault_server_command(behaviour: str, port: int, *options: str) -> list[str]:
    """The argv of a fault server process on `port` (0: any free port, printed on start)."""
    return [sys.executable, SCRIPT, "--behaviour", behaviour, "--port", str(port), *options]


async def serve(faults: Faults, host: str, port: int) -> None:
    runner = web.AppRunner(make_app(faults), access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    server = site._server  # aiohttp exposes the bound port nowhere else
    assert server is not None and server.sockets
    bound = server.sockets[0].getsockname()[1]
    print(f"faultserver {faults.behaviour} listening on http://{host}:{bound} pid {os.getpid()}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--behaviour", required=True, choices=sorted(BEHAVIOURS))
    parser.add_argument("--port", type=int, default=0, help="0: any free port (printed)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--ready-after", type=float, default=0.0, help="slow-start: seconds not ready")
    parser.add_argument("--flap-period", type=float, default=0.5, help="flapping: seconds per state")
    parser.add_argument("--grow-mb", type=float, default=16.0, help="memory-growth: MiB kept per request")
    parser.add_argument(
        "--oversize-mb", type=float, default=DEFAULT_OVERSIZE_BYTES / 2**20, help="oversized: MiB answered"
    )
    args = parser.parse_args(argv)
    faults = Faults(
        behaviour=args.behaviour,
        ready_after_s=args.ready_after,
        flap_period_s=args.flap_period,
        grow_bytes=int(args.grow_mb * 2**20),
        oversize_bytes=int(args.oversize_mb * 2**20),
    )
    asyncio.run(serve(faults, args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
