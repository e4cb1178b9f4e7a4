"""TorchServe's native API: requests, answers and health."""

from __future__ import annotations

import pytest

from tests.protocols.support import body, server, shape
from warmgate.protocols import InvalidResponse, make_adapter


def test_torchserve_sends_text_plain_for_one_string_and_json_otherwise() -> None:
    text = shape(batch=0, t={"datatype": "BYTES", "dims": [1], "data": "literal", "value": "hello there"})
    request, raw = body("torchserve", text)
    assert request.url == "http://127.0.0.1:9/predictions/m"
    assert request.headers["Content-Type"].startswith("text/plain")
    assert raw == b"hello there"
    request, document = body("torchserve", shape(batch=2), model_version="1.0")
    assert request.url.endswith("/predictions/m/1.0")
    assert document == {"x": [[1.5, 2.5], [1.5, 2.5]]}


def test_torchserve_parse_json_text_and_empty() -> None:
    adapter = make_adapter(server("torchserve"))
    assert adapter.parse(b'{"label": "cat", "score": 0.9}')["score"].data == [0.9]
    assert adapter.parse(b"positive")["body"].data == [b"positive"]
    with pytest.raises(InvalidResponse, match="no outputs"):
        adapter.parse(b"")
    with pytest.raises(InvalidResponse, match="no outputs"):
        adapter.parse(b"[]")


def test_health_is_ping() -> None:
    adapter = make_adapter(server("torchserve"))
    assert [e.url for e in adapter.readiness_endpoints()] == ["http://127.0.0.1:9/ping"]
    assert adapter.liveness_endpoint().url == "http://127.0.0.1:9/ping"
    assert not adapter.supports_auto_shapes()
