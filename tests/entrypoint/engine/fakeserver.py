"""A loopback Open Inference Protocol server with controllable faults, for engine tests.

Used in-process (``make_app(Behaviour(...))`` with pytest-aiohttp's ``aiohttp_server``) and as a
real server process for ``warmgate run`` end-to-end tests::

    python fakeserver.py --port P [--first-delay S] [--delay S] [--die-after N --die-code C] [--hang]
                         [--fail-batch B] [--cold-at-call B:N:S] [--unready-after N [--unready-for S]]

The model answers ``output0 = 2 * input + 1`` (FP32, same shape as the first input).

Triton's binary tensor extension is understood (FP32 inputs): a request with an
``Inference-Header-Content-Length`` header is a JSON header followed by each input's raw bytes,
and one that asks for ``binary_data_output`` is answered the same way (``binary_answers=False``:
in plain JSON, which the extension allows). Its codec is written here with ``struct``, not taken
from warmgate, so a mistake in warmgate's cannot cancel itself out.

Workers: the server has ``workers`` slots, each cold (``first_delay`` on its first request per
batch size) until used. Free slots form a LIFO stack, so a client sending one request at a time
always reaches the same slot; only concurrent requests reach the others (as with real pre-fork
servers, where a sequential client keeps hitting one warm worker).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

MODEL = "demo"
# Triton's binary tensor extension: the length of the JSON header that starts a binary body.
INFERENCE_HEADER = "Inference-Header-Content-Length"


@dataclass
class Behaviour:
    workers: int = 1
    # Extra latency of a cold slot's first request, per batch size (key None: every batch size).
    first_delay: dict[int | None, float] = field(default_factory=dict)
    # Latency of every request.
    delay: float = 0.0
    # batch size -> (status, body) answered instead of outputs; `fail_when(call number)` (1-based,
    # per batch size) narrows it to some calls.
    fail: dict[int, tuple[int, str]] = field(default_factory=dict)
    fail_when: Callable[[int], bool] | None = None
    hang: set[int] = field(default_factory=set)
    reset: set[int] = field(default_factory=set)
    no_outputs: set[int] = field(default_factory=set)
    # "safe" | "unsafe" (shared output buffer) | "jitter" (tiny float noise) | "sampling" (random)
    model: str = "safe"
    # Exit the process (script mode) after this many inference requests.
    die_after: int | None = None
    die_code: int = 3
    metadata_inputs: list[dict[str, Any]] | None = None
    # batch size -> {call number: seconds}: one-time costs paid by those calls of the batch size
    # (1-based), not the first: a JIT that specialises after profiling runs, which a warmup with
    # too few requests leaves unpaid (or, on a later call, a hiccup of a warm server).
    cold_at_call: dict[int, dict[int, float]] = field(default_factory=dict)
    # Readiness answers 503 once this many inference requests arrived, for `unready_for_s`
    # seconds (None: from then on).
    unready_after: int | None = None
    unready_for_s: float | None = None
    unready_since: float | None = None
    # Answer a request that asks for binary outputs with binary outputs (False: plain JSON).
    binary_answers: bool = True
    # One-time costs for the diagnosis tests (causes.py): the very first inference request of
    # the server, whatever its shape, while later ones wait for it (a lazy global init under a
    # lock); each slot's first request, whatever its shape (per-worker init); the first request
    # of a per-item length (len(data) / batch), whatever its batch (kernels sized per length).
    global_init_delay: float = 0.0
    worker_init_delay: float = 0.0
    first_delay_length: dict[int, float] = field(default_factory=dict)
    # Added to a request while another one is in flight (contention inside the server).
    contention_delay: float = 0.0
    # Name the slot answering in an x-warmgate-worker header, as `warmgate serve` names its worker.
    worker_header: bool = False
    # Counters the tests read.
    calls: dict[int, int] = field(default_factory=dict)
    total_calls: int = 0
    max_in_flight: int = 0
    binary_requests: int = 0
    binary_answered: int = 0


def _batch(request_json: dict[str, Any]) -> int:
    shape = request_json["inputs"][0]["shape"]
    return int(shape[0]) if shape else 0


def _binary_request(body: bytes, header_length: int) -> dict[str, Any]:
    """The JSON header of a binary request, each FP32 input's raw bytes put in as its `data`."""
    document: dict[str, Any] = json.loads(body[:header_length])
    offset = header_length
    for spec in document["inputs"]:
        size = spec["parameters"]["binary_data_size"]
        raw = body[offset : offset + size]
        offset += size
        if spec["datatype"] != "FP32" or len(raw) != size:
            raise web.HTTPBadRequest(text=f"input {spec['name']}: cannot read {spec['datatype']} binary data")
        spec["data"] = list(struct.unpack(f"<{size // 4}f", raw))
    if offset != len(body):
        raise web.HTTPBadRequest(text="binary data sizes do not add up")
    return document


def _binary_answer(output: dict[str, Any]) -> web.Response:
    raw = struct.pack(f"<{len(output['data'])}f", *output.pop("data"))
    output["parameters"] = {"binary_data_size": len(raw)}
    header = json.dumps({"model_name": MODEL, "outputs": [output]}).encode()
    return web.Response(
        body=header + raw,
        content_type="application/octet-stream",
        headers={INFERENCE_HEADER: str(len(header))},
    )


def make_app(behaviour: Behaviour) -> web.Application:
    slots: asyncio.LifoQueue[int] = asyncio.LifoQueue()
    for slot in range(behaviour.workers):
        slots.put_nowait(slot)
    warm: set[tuple[int, int]] = set()
    shared_buffer: list[float] = []
    in_flight = 0
    global_init = asyncio.Lock()
    initialised = False
    initialised_slots: set[int] = set()
    warm_lengths: set[int] = set()

    async def ready(_request: web.Request) -> web.Response:
        since = behaviour.unready_since
        if since is not None:
            duration = behaviour.unready_for_s
            if duration is None or asyncio.get_running_loop().time() - since < duration:
                return web.Response(status=503, text="model unloading")
        return web.Response(text="")

    async def metadata(_request: web.Request) -> web.Response:
        inputs = behaviour.metadata_inputs
        if inputs is None:
            inputs = [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}]
        return web.json_response({"name": MODEL, "platform": "fake", "inputs": inputs, "outputs": []})

    async def infer(request: web.Request) -> web.StreamResponse:
        nonlocal in_flight, initialised
        if behaviour.global_init_delay and not initialised:
            async with global_init:
                if not initialised:
                    await asyncio.sleep(behaviour.global_init_delay)
                    initialised = True
        if INFERENCE_HEADER in request.headers:
            behaviour.binary_requests += 1
            document = _binary_request(await request.read(), int(request.headers[INFERENCE_HEADER]))
        else:
            document = await request.json()
        batch = _batch(document)
        behaviour.calls[batch] = behaviour.calls.get(batch, 0) + 1
        behaviour.total_calls += 1
        if behaviour.unready_after is not None and behaviour.total_calls == behaviour.unready_after:
            behaviour.unready_since = asyncio.get_running_loop().time()
        if behaviour.die_after is not None and behaviour.total_calls > behaviour.die_after:
            os._exit(behaviour.die_code)
        if batch in behaviour.hang:
            await asyncio.sleep(3600)
        if batch in behaviour.reset:
            assert request.transport is not None
            request.transport.abort()
            return web.Response()
        if batch in behaviour.fail and (
            behaviour.fail_when is None or behaviour.fail_when(behaviour.calls[batch])
        ):
            status, text = behaviour.fail[batch]
            return web.Response(status=status, text=text)
        slot = await slots.get()
        in_flight += 1
        behaviour.max_in_flight = max(behaviour.max_in_flight, in_flight)
        try:
            if (slot, batch) not in warm:
                delay = behaviour.first_delay.get(batch, behaviour.first_delay.get(None, 0.0))
                if delay:
                    await asyncio.sleep(delay)
                warm.add((slot, batch))
            if behaviour.worker_init_delay and slot not in initialised_slots:
                await asyncio.sleep(behaviour.worker_init_delay)
                initialised_slots.add(slot)
            length = len(document["inputs"][0]["data"]) // max(1, batch)
            if length in behaviour.first_delay_length and length not in warm_lengths:
                warm_lengths.add(length)
                await asyncio.sleep(behaviour.first_delay_length[length])
            if behaviour.contention_delay and in_flight > 1:
                await asyncio.sleep(behaviour.contention_delay)
            cost = behaviour.cold_at_call.get(batch, {}).get(behaviour.calls[batch])
            if cost:
                await asyncio.sleep(cost)
            if behaviour.delay:
                await asyncio.sleep(behaviour.delay)
            data = [2.0 * float(x) + 1.0 for x in document["inputs"][0]["data"]]
            if behaviour.model == "unsafe":
                # The bug under test: one output buffer shared by all requests. Another request
                # may overwrite it while this one yields, so overlapping requests swap answers.
                shared_buffer[:] = data
                await asyncio.sleep(0.002)
                data = list(shared_buffer)
            elif behaviour.model == "jitter":
                data = [v * (1 + random.uniform(-1e-7, 1e-7)) for v in data]
            elif behaviour.model == "sampling":
                data = [random.random() for _ in data]
        finally:
            in_flight -= 1
            slots.put_nowait(slot)
        headers = {"x-warmgate-worker": str(slot)} if behaviour.worker_header else None
        if batch in behaviour.no_outputs:
            return web.json_response({"model_name": MODEL, "outputs": []}, headers=headers)
        output = {
            "name": "output0",
            "datatype": "FP32",
            "shape": document["inputs"][0]["shape"],
            "data": data,
        }
        if behaviour.binary_answers and document.get("parameters", {}).get("binary_data_output"):
            behaviour.binary_answered += 1
            return _binary_answer(output)
        return web.json_response({"model_name": MODEL, "outputs": [output]}, headers=headers)

    app = web.Application()
    app.router.add_get("/v2/health/ready", ready)
    app.router.add_get("/v2/health/live", ready)
    app.router.add_get(f"/v2/models/{MODEL}/ready", ready)
    app.router.add_get(f"/v2/models/{MODEL}", metadata)
    app.router.add_post(f"/v2/models/{MODEL}/infer", infer)
    return app


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--first-delay", type=float, default=0.0)
    parser.add_argument("--die-after", type=int, default=None)
    parser.add_argument("--die-code", type=int, default=3)
    parser.add_argument("--hang", action="store_true", help="never answer an inference request")
    parser.add_argument("--fail-batch", type=int, action="append", default=[], help="answer HTTP 500 for it")
    parser.add_argument("--delay", type=float, default=0.0, help="latency of every request (s)")
    parser.add_argument(
        "--cold-at-call", action="append", default=[], metavar="B:N:S", help="batch B's call N costs S more"
    )
    parser.add_argument("--unready-after", type=int, help="readiness 503 from this inference request on")
    parser.add_argument("--unready-for", type=float, help="... for this many seconds (default: for good)")
    args = parser.parse_args(argv)
    cold: dict[int, dict[int, float]] = {}
    for spec in args.cold_at_call:
        batch, call, seconds = spec.split(":")
        cold.setdefault(int(batch), {})[int(call)] = float(seconds)
    behaviour = Behaviour(
        first_delay={None: args.first_delay},
        delay=args.delay,
        die_after=args.die_after,
        die_code=args.die_code,
        cold_at_call=cold,
        unready_after=args.unready_after,
        unready_for_s=args.unready_for,
    )
    if args.hang:
        behaviour.hang = set(range(1025))
    behaviour.fail = {batch: (500, "RuntimeError: shape mismatch in layer 3") for batch in args.fail_batch}
    print(f"fakeserver listening on {args.port}", flush=True)
    # A short shutdown: a hanging request must not hold up the exit on SIGTERM.
    web.run_app(make_app(behaviour), host="127.0.0.1", port=args.port, print=None, shutdown_timeout=0.5)


if __name__ == "__main__":
    main(sys.argv[1:])
