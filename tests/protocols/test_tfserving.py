"""TF Serving REST: requests, answers and health."""

from __future__ import annotations

import functools

import aiohttp
import pytest
from aiohttp import web

from tests.protocols.support import ServerFactory, app_with, body, server, shape
from warmgate.config import ServerConfig
from warmgate.protocols import InvalidResponse, make_adapter
from warmgate.protocols.health import wait_until_healthy


def test_tfserving_batched_single_input_uses_plain_instances() -> None:
    request, document = body("tfserving", shape(batch=2))
    assert request.url == "http://127.0.0.1:9/v1/models/m:predict"
    assert document == {"instances": [[1.5, 2.5], [1.5, 2.5]]}


def test_tfserving_several_inputs_use_named_instances_and_unbatched_uses_columns() -> None:
    two = shape(
        batch=2,
        a={"datatype": "INT32", "dims": [1], "data": "literal", "value": 1},
        b={"datatype": "BYTES", "dims": [1], "data": "literal", "value": "w"},
    )
    _request, document = body("tfserving", two)
    assert document == {"instances": [{"a": [1], "b": ["w"]}, {"a": [1], "b": ["w"]}]}
    request, columns = body("tfserving", shape(batch=0), model_version="2")
    assert request.url.endswith("/v1/models/m/versions/2:predict")
    assert columns == {"inputs": {"x": [1.5, 2.5]}}


def test_tfserving_parse_predictions_outputs_and_errors() -> None:
    adapter = make_adapter(server("tfserving"))
    assert adapter.parse(b'{"predictions": [[0.5, 1.0], [2.0, 3.0]]}')["predictions"].data == [
        0.5,
        1.0,
        2.0,
        3.0,
    ]
    named = adapter.parse(b'{"predictions": [{"a": 1, "b": [2]}, {"a": 3, "b": [4]}]}')
    assert named["a"].data == [1, 3]
    assert named["b"].data == [2, 4]
    assert adapter.parse(b'{"outputs": {"y": [1, 2]}}')["y"].data == [1, 2]
    with pytest.raises(InvalidResponse, match="carries an error: Serving signature"):
        adapter.parse(b'{"error": "Serving signature name: \\"x\\" not found"}')
    with pytest.raises(InvalidResponse, match="no predictions or outputs"):
        adapter.parse(b'{"predictions": []}')


# ---- health --------------------------------------------------------------------------------------


async def test_ready_needs_an_available_version(aiohttp_server: ServerFactory) -> None:
    """TF Serving answers 200 while the model loads: the body says whether a version is AVAILABLE."""
    state = {"value": "LOADING"}

    async def status(_: web.Request) -> web.Response:
        body = {"model_version_status": [{"version": "1", "state": state["value"]}]}
        return web.json_response(body)

    test_server = await aiohttp_server(app_with({"/v1/models/half_plus_two": status}))
    adapter = make_adapter(
        ServerConfig(
            url=str(test_server.make_url("")).rstrip("/"), protocol="tfserving", model="half_plus_two"
        )
    )

    def on_poll(polls: int, reason: str | None) -> None:
        if polls == 2:
            assert reason is not None and "no AVAILABLE model version (states: LOADING)" in reason
            state["value"] = "AVAILABLE"

    async with aiohttp.ClientSession() as session:
        check = functools.partial(adapter.check_ready, session)
        assert await wait_until_healthy(check, 10, on_poll=on_poll) == 3


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (b"<html>", "model status is not JSON"),
        (b"[1]", "model status is not JSON"),
        (b'{"model_version_status": 5}', "model status lists no versions"),
        (b'{"model_version_status": []}', "no AVAILABLE model version (states: none)"),
    ],
)
def test_odd_model_status_is_not_ready(answer: bytes, reason: str) -> None:
    [endpoint] = make_adapter(server("tfserving")).readiness_endpoints()
    assert endpoint.url == "http://127.0.0.1:9/v1/models/m"
    assert endpoint.body_check is not None
    assert endpoint.body_check(answer) == reason


def test_liveness_is_the_model_status_and_auto_shapes_are_refused() -> None:
    adapter = make_adapter(server("tfserving"))
    assert adapter.liveness_endpoint().url == "http://127.0.0.1:9/v1/models/m"
    assert not adapter.supports_auto_shapes()
