"""The fault server does what each behaviour says: other tests rely on it to misbehave on cue."""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any

import aiohttp
import psutil
import pytest

from tests.support.faultserver import BEHAVIOURS, MALFORMED, MODEL, Faults, fault_server_command, make_app
from tests.support.procs import Proc
from warmgate.config import ServerConfig
from warmgate.protocols import InvalidResponse, make_adapter

INFER = f"/v2/models/{MODEL}/infer"
REQUEST = {"inputs": [{"name": "input", "shape": [2, 2], "datatype": "FP32", "data": [0.0, 1.0, 2.0, 3.0]}]}


async def start(aiohttp_client: Any, behaviour: str, **options: Any) -> tuple[Any, Faults]:
    faults = Faults(behaviour, **options)
    return await aiohttp_client(make_app(faults)), faults


async def test_ok_answers_like_a_model_server(aiohttp_client: Any) -> None:
    client, _ = await start(aiohttp_client, "ok")
    for path in ("/v2/health/ready", "/v2/health/live", f"/v2/models/{MODEL}/ready"):
        assert (await client.get(path)).status == 200
    metadata = await (await client.get(f"/v2/models/{MODEL}")).json()
    assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}]
    answer = await (await client.post(INFER, json=REQUEST)).json()
    assert answer["outputs"] == [
        {"name": "output0", "datatype": "FP32", "shape": [2, 2], "data": [1, 3, 5, 7]}
    ]


@pytest.mark.parametrize("behaviour", sorted(MALFORMED))
async def test_each_malformed_behaviour_answers_200_with_a_body_the_oip_decoder_refuses(
    aiohttp_client: Any, behaviour: str
) -> None:
    client, _ = await start(aiohttp_client, behaviour)
    response = await client.post(INFER, json=REQUEST)
    assert response.status == 200
    oip = make_adapter(ServerConfig(url="http://127.0.0.1:9", protocol="oip", model=MODEL))
    with pytest.raises(InvalidResponse):
        oip.decode(await response.read(), batch_size=2)


async def test_hang_never_answers_and_reset_drops_the_connection(aiohttp_client: Any) -> None:
    client, _ = await start(aiohttp_client, "hang")
    with pytest.raises(asyncio.TimeoutError):
        await client.post(INFER, json=REQUEST, timeout=aiohttp.ClientTimeout(total=0.3))
    client, _ = await start(aiohttp_client, "reset")
    with pytest.raises(aiohttp.ClientConnectionError):
        await client.post(INFER, json=REQUEST)


async def test_oversized_streams_more_than_asked_for(aiohttp_client: Any) -> None:
    client, _ = await start(aiohttp_client, "oversized", oversize_bytes=3 * 1024 * 1024)
    response = await client.post(INFER, json=REQUEST)
    assert response.content_length is None  # streamed: the size is only known by reading
    assert len(await response.read()) > 3 * 1024 * 1024


async def test_slow_start_and_flapping_readiness(aiohttp_client: Any) -> None:
    client, _ = await start(aiohttp_client, "slow-start", ready_after_s=0.3)
    assert (await client.get("/v2/health/ready")).status == 503
    assert (await client.get("/v2/health/live")).status == 200
    deadline = time.monotonic() + 10
    while (await client.get(f"/v2/models/{MODEL}/ready")).status != 200:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)

    client, _ = await start(aiohttp_client, "flapping", flap_period_s=0.1)
    seen: set[int] = set()
    deadline = time.monotonic() + 10
    while seen != {200, 503}:
        assert time.monotonic() < deadline
        seen.add((await client.get("/v2/health/ready")).status)
        await asyncio.sleep(0.02)


async def test_unknown_model_is_a_404_naming_it(aiohttp_client: Any) -> None:
    client, _ = await start(aiohttp_client, "unknown-model")
    assert (await client.get("/v2/health/ready")).status == 200
    for response in (await client.get(f"/v2/models/{MODEL}/ready"), await client.post(INFER, json=REQUEST)):
        assert response.status == 404
        assert "unknown model: 'demo'" in (await response.json())["error"]


def test_an_unknown_behaviour_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown behaviour 'nope'"):
        Faults("nope")
    assert set(MALFORMED) < set(BEHAVIOURS)


def test_as_a_process_on_port_0_it_prints_its_url_and_grows_per_request() -> None:
    proc = Proc(fault_server_command("memory-growth", 0, "--grow-mb", "32"))
    try:
        line = proc.expect("listening on", timeout=20)
        match = re.fullmatch(
            r"faultserver memory-growth listening on (http://127\.0\.0\.1:\d+) pid (\d+)", line
        )
        assert match, line
        url, pid = match.group(1), int(match.group(2))
        assert pid == proc.pid
        before = psutil.Process(pid).memory_info().rss

        async def send_three() -> None:
            async with aiohttp.ClientSession() as session:
                for _ in range(3):
                    async with session.post(url + INFER, data=json.dumps(REQUEST)) as response:
                        assert response.status == 200

        asyncio.run(send_three())
        grown = psutil.Process(pid).memory_info().rss - before
        assert grown >= 3 * 32 * 1024 * 1024 * 0.9, grown
        proc.signal()
        assert proc.wait(10) == 0
    finally:
        proc.close()
