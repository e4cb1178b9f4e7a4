"""The probe's checks of the model server over the lean HTTP/1.1 client, against real loopback
servers: what each failure says, the protocols' body checks, and what is never followed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from warmgate.probe.server_check import HttpServerCheck
from warmgate.protocols.readiness import BodyCheck, Endpoint

pytestmark = pytest.mark.timeout(30)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Serve = Callable[[dict[str, Handler]], Awaitable[TestServer]]


@pytest.fixture
async def serve(aiohttp_server: Any) -> Serve:
    async def start(routes: dict[str, Handler]) -> TestServer:
        app = web.Application()
        for path, handler in routes.items():
            app.router.add_get(path, handler)
        server: TestServer = await aiohttp_server(app)
        return server

    return start


@pytest.fixture
async def checks() -> AsyncIterator[list[HttpServerCheck]]:
    made: list[HttpServerCheck] = []
    yield made
    for check in made:
        await check.close()


def make_check(
    made: list[HttpServerCheck], ready: list[Endpoint], live: Endpoint, timeout_s: float = 5
) -> HttpServerCheck:
    made.append(HttpServerCheck(ready, live, timeout_s))
    return made[-1]


def answer(status: int = 200, body: Any = None) -> Handler:
    async def handle(_request: web.Request) -> web.Response:
        return web.json_response(body if body is not None else {"ok": status == 200}, status=status)

    return handle


async def test_ready_names_the_first_failure_in_order_with_status_and_body(
    serve: Serve, checks: list[HttpServerCheck]
) -> None:
    server = await serve({"/a": answer(), "/b": answer(503, {"error": "model loading"}), "/c": answer(500)})
    url = lambda path: str(server.make_url(path))  # noqa: E731
    check = make_check(
        checks, [Endpoint(url("/a")), Endpoint(url("/b")), Endpoint(url("/c"))], Endpoint(url("/a"))
    )
    assert await check.ready() == f'GET {url("/b")}: HTTP 503 {{"error": "model loading"}}'
    assert await check.live() is None
    passing = make_check(checks, [Endpoint(url("/a"))], Endpoint(url("/c")))
    assert await passing.ready() is None
    assert await passing.live() == f'GET {url("/c")}: HTTP 500 {{"ok": false}}'


async def test_body_checks_of_tf_serving_and_openai_compatible_servers(
    serve: Serve, checks: list[HttpServerCheck]
) -> None:
    loading = {"model_version_status": [{"version": "1", "state": "LOADING"}]}
    listed = {"data": [{"id": "other"}, {"id": "llama"}]}
    server = await serve({"/tf": answer(body=loading), "/models": answer(body=listed)})
    tf, models = str(server.make_url("/tf")), str(server.make_url("/models"))
    not_yet = make_check(checks, [Endpoint(tf, BodyCheck("model-available"))], Endpoint(tf))
    assert await not_yet.ready() == f"GET {tf}: no AVAILABLE model version (states: LOADING)"
    assert await not_yet.live() is None  # alive means answering
    served = make_check(checks, [Endpoint(models, BodyCheck("lists-model", "llama"))], Endpoint(models))
    assert await served.ready() is None
    missing = make_check(checks, [Endpoint(models, BodyCheck("lists-model", "mistral"))], Endpoint(models))
    assert await missing.ready() == (
        f"GET {models}: does not list model 'mistral' (server.model); it lists 'other', 'llama'"
    )


async def test_a_redirect_is_not_followed_and_says_where_it_points(
    serve: Serve, checks: list[HttpServerCheck]
) -> None:
    async def moved(_request: web.Request) -> web.Response:
        raise web.HTTPFound("/health/")

    server = await serve({"/health": moved, "/health/": answer()})
    url = str(server.make_url("/health"))
    reason = await make_check(checks, [Endpoint(url)], Endpoint(url)).ready()
    assert reason is not None
    assert reason.startswith(
        f"GET {url}: HTTP 302 redirects to /health/; the probe does not follow redirects"
    )
    assert "server.health_path" in reason


async def test_endpoints_are_asked_at_once_and_a_silent_or_dead_server_is_named(
    serve: Serve, checks: list[HttpServerCheck], unused_tcp_port: int
) -> None:
    second_arrived, release = asyncio.Event(), asyncio.Event()

    async def first(_request: web.Request) -> web.Response:
        # Answers only once the second endpoint was asked: asked one after the other, it would
        # time out instead.
        await second_arrived.wait()
        return web.json_response({}, status=503)

    async def second(_request: web.Request) -> web.Response:
        second_arrived.set()
        await release.wait()
        return web.json_response({})

    server = await serve({"/first": first, "/second": second})
    first_url, second_url = str(server.make_url("/first")), str(server.make_url("/second"))
    check = make_check(checks, [Endpoint(first_url), Endpoint(second_url)], Endpoint(second_url), timeout_s=2)
    assert await check.ready() == f"GET {first_url}: HTTP 503 {{}}"
    assert await check.live() == f"GET {second_url}: no answer within 2s"
    release.set()
    dead = f"http://127.0.0.1:{unused_tcp_port}/v2/health/live"
    reason = await make_check(checks, [Endpoint(dead)], Endpoint(dead)).live()
    assert reason is not None and reason.startswith(f"GET {dead}: cannot connect (")


async def test_credentials_in_the_url_are_sent_as_basic_authorisation(
    serve: Serve, checks: list[HttpServerCheck]
) -> None:
    seen: list[str | None] = []

    async def guarded(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        return web.json_response({}, status=200 if seen[-1] == "Basic dXNlcjpzM2NyZXQ=" else 401)

    server = await serve({"/health": guarded})
    url = f"http://user:s3cret@127.0.0.1:{server.port}/health"
    assert await make_check(checks, [Endpoint(url)], Endpoint(url)).ready() is None
    assert seen == ["Basic dXNlcjpzM2NyZXQ="]


async def test_fetch_text_reads_a_200_within_its_cap_and_nothing_else(
    serve: Serve, checks: list[HttpServerCheck]
) -> None:
    async def metrics(_request: web.Request) -> web.Response:
        return web.Response(text="warmgate_server_requests_total 3\n")

    server = await serve({"/metrics": metrics, "/missing": answer(404)})
    url = str(server.make_url("/metrics"))
    check = make_check(checks, [Endpoint(url)], Endpoint(url))
    assert await check.fetch_text(url, 1000) == "warmgate_server_requests_total 3\n"
    assert await check.fetch_text(url, 10) is None  # over the caller's cap
    assert await check.fetch_text(str(server.make_url("/missing")), 1000) is None
