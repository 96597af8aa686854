"""The proxy against a real legacy HTTP server (port 0): transparent answers, bounded errors,
capture of mapped routes only, and a customer path that survives a broken stream."""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from sidecar.capture import Capture
from sidecar.config import CaptureSettings, ProxySettings
from sidecar.domain.mirror import MirrorRecord, RecordKind
from sidecar.errors import LedgerUnavailable
from sidecar.mapping_file import load_route_table
from sidecar.memory import InMemoryMirrorLog
from sidecar.proxy.app import Proxy, legacy_session, requests_log
from sidecar.runtime import run

EXAMPLE = Path(__file__).parents[2] / "config" / "mappings" / "example-legacy.toml"


async def legacy_handler(request: web.Request) -> web.StreamResponse:
    """A stand-in legacy service: echoes what it got, with its own headers and statuses."""
    body = await request.read()
    if request.path == "/slow":
        await asyncio.sleep(2)
    if request.path.endswith("/payments"):
        return web.json_response(
            {"payment_id": "p-1", "echo": body.decode()},
            status=201,
            headers={"X-Legacy": "yes", "Connection": "close, X-Drop", "X-Drop": "hop"},
        )
    if request.path == "/raw":
        return web.json_response(
            {
                "encoding": request.headers.get("Content-Encoding"),
                "body_hex": body.hex(),
                "headers": sorted(k.lower() for k in request.headers),
            }
        )
    if request.path == "/head":
        return web.Response(body=b"x" * 1234, content_type="text/plain")
    if request.path == "/teapot":
        return web.Response(status=418, body=b"\x00\xffbinary", headers={"X-Tea": "earl grey"})
    seen = sorted(k.lower() for k in request.headers if k.lower().startswith("x-"))
    return web.json_response({"path": request.path_qs, "seen": seen}, headers={"X-Legacy": "yes"})


@dataclass
class Rig:
    legacy: TestServer
    proxy: TestServer
    client: aiohttp.ClientSession
    log: InMemoryMirrorLog
    proxy_obj: Proxy

    def via_proxy(self, path: str) -> str:
        return str(self.proxy.make_url(path))

    def direct(self, path: str) -> str:
        return str(self.legacy.make_url(path))


async def make_rig(
    mode: str = "shadow", log: InMemoryMirrorLog | None = None, **proxy: object
) -> AsyncIterator[Rig]:
    legacy_app = web.Application()
    legacy_app.router.add_route("*", "/{tail:.*}", legacy_handler)
    legacy = TestServer(legacy_app)
    await legacy.start_server(auto_decompress=False)  # to see bodies as they were sent
    settings = replace(
        ProxySettings(),
        legacy_url=str(legacy.make_url("")).rstrip("/"),
        mode=mode,
        mapping=str(EXAMPLE),
        legacy_timeout_s=0.5,
        **proxy,  # type: ignore[arg-type]
    )
    mirror = log or InMemoryMirrorLog()
    capture = Capture(mirror, CaptureSettings(wait_ms_max=100.0))
    await capture.start()
    session = await legacy_session(settings)
    proxy_obj = Proxy(settings, session, load_route_table(EXAMPLE), capture)
    server = TestServer(proxy_obj.app())
    await server.start_server(auto_decompress=False)  # as serve() runs it
    client = aiohttp.ClientSession(auto_decompress=False)
    try:
        yield Rig(legacy, server, client, mirror, proxy_obj)
    finally:
        await client.close()
        await server.close()
        await session.close()
        await capture.stop()
        await legacy.close()


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    async for r in make_rig():
        yield r


async def fetch(
    client: aiohttp.ClientSession, method: str, url: str, **kw: object
) -> tuple[int, dict[str, str], bytes]:
    async with client.request(method, url, **kw) as response:  # type: ignore[arg-type]
        body = await response.read()
        headers = {
            k.lower(): v
            for k, v in response.headers.items()
            if k.lower() not in {"date", "server", "content-length"}
        }
        return response.status, headers, body


@pytest.mark.parametrize(
    ("method", "path", "kw"),
    [
        ("POST", "/v1/accounts/acc-1/payments", {"json": {"amount": {"value": "1.00"}}}),
        ("GET", "/v1/unmapped/thing?x=1&y=2", {}),
        ("PUT", "/teapot", {"data": b"\x01\x02"}),
        ("GET", "/echo", {"headers": {"X-Custom": "1"}}),
    ],
)
async def test_answers_through_the_proxy_equal_direct_answers(
    rig: Rig, method: str, path: str, kw: dict[str, object]
) -> None:
    direct = await fetch(rig.client, method, rig.direct(path), **kw)
    proxied = await fetch(rig.client, method, rig.via_proxy(path), **kw)
    assert proxied[0] == direct[0]
    assert proxied[2] == direct[2]
    # end-to-end headers equal; what the legacy marked hop-by-hop is not passed on
    assert {k: v for k, v in proxied[1].items() if k != "connection"} == {
        k: v for k, v in direct[1].items() if k not in {"connection", "x-drop"}
    }


async def test_hop_by_hop_request_headers_do_not_reach_the_legacy_service(rig: Rig) -> None:
    headers = {"X-Custom": "1", "X-Keep": "2", "Connection": "X-Custom", "TE": "trailers"}
    status, _, body = await fetch(rig.client, "GET", rig.via_proxy("/echo"), headers=headers)
    assert status == 200
    assert b'"x-keep"' in body and b'"x-custom"' not in body


async def test_mapped_requests_are_captured_with_intent_and_outcome(rig: Rig) -> None:
    path = "/v1/accounts/acc-1/payments"
    await fetch(rig.client, "POST", rig.via_proxy(path), json={"a": 1})
    await fetch(rig.client, "GET", rig.via_proxy("/v1/unmapped"))
    events = await rig.log.read()
    assert [e.record.kind for e in events] == [RecordKind.INTENT, RecordKind.OUTCOME]
    intent, outcome = events[0].record, events[1].record
    assert intent.request_id == outcome.request_id and intent.route == "payment"
    assert intent.content["path"] == path and json.loads(intent.content["body"]) == {"a": 1}
    assert outcome.content["status"] == 201
    assert rig.proxy_obj.stats.mapped == 1 and rig.proxy_obj.stats.unmapped == 1


async def test_a_body_over_the_limit_is_a_clear_413(rig: Rig) -> None:
    too_big = io.BytesIO(b"x" * (rig.proxy_obj.settings.body_bytes_max + 1))
    status, _, body = await fetch(rig.client, "POST", rig.via_proxy("/v1/unmapped"), data=too_big)
    assert status == 413 and b'"request_too_large"' in body


async def test_a_slow_legacy_service_is_a_504_and_an_absent_one_a_502(rig: Rig) -> None:
    status, _, body = await fetch(rig.client, "GET", rig.via_proxy("/slow"))
    assert status == 504 and b'"legacy_timeout"' in body
    rig.proxy_obj.settings = replace(rig.proxy_obj.settings, legacy_url="http://127.0.0.1:9")
    status, _, body = await fetch(rig.client, "GET", rig.via_proxy("/anything"))
    assert status == 502 and b'"legacy_unreachable"' in body


class DownLog(InMemoryMirrorLog):
    async def append(self, records: Sequence[MirrorRecord]) -> list[int]:
        raise LedgerUnavailable("stream store down for the test")


async def test_the_customer_path_keeps_answering_when_the_stream_is_down() -> None:
    async for rig in make_rig(log=DownLog()):
        statuses = await asyncio.gather(
            *(
                fetch(rig.client, "POST", rig.via_proxy("/v1/accounts/a/payments"), json={})
                for _ in range(10)
            )
        )
        assert [s[0] for s in statuses] == [201] * 10
        capture = rig.proxy_obj.capture
        assert capture is not None
        await capture.stop()  # settles what is still queued or being retried
        assert capture.stats.recorded == 20  # intent and outcome of each
        assert sum(capture.stats.dropped.values()) == 20 and capture.stats.committed == 0


async def test_health_and_readiness(rig: Rig) -> None:
    assert (await fetch(rig.client, "GET", rig.via_proxy("/_sidecar/health")))[0] == 200
    assert (await fetch(rig.client, "GET", rig.via_proxy("/_sidecar/ready")))[0] == 200
    capture = rig.proxy_obj.capture
    assert capture is not None
    await capture.stop()
    assert (await fetch(rig.client, "GET", rig.via_proxy("/_sidecar/ready")))[0] == 503


async def test_a_compressed_body_and_the_clients_headers_reach_the_legacy_service_as_sent(
    rig: Rig,
) -> None:
    raw = gzip.compress(b'{"a":1}')
    headers = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
    async with aiohttp.ClientSession(
        skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent")
    ) as bare:
        status, _, body = await fetch(
            bare, "POST", rig.via_proxy("/raw"), data=raw, headers=headers
        )
    seen = json.loads(body)
    assert status == 200
    assert seen["encoding"] == "gzip" and bytes.fromhex(seen["body_hex"]) == raw
    assert not {"accept", "accept-encoding", "user-agent"} & set(seen["headers"])


async def test_a_head_answer_keeps_its_content_length(rig: Rig) -> None:
    async with rig.client.head(rig.via_proxy("/head")) as response:
        assert response.status == 200
        assert response.headers["Content-Length"] == "1234"


async def test_capture_keeps_repeated_query_parameters(rig: Rig) -> None:
    path = "/v1/accounts/acc-1/payments?tag=a&tag=b"
    await fetch(rig.client, "POST", rig.via_proxy(path), json={})
    intent = (await rig.log.read())[0].record
    assert intent.content["query"] == [["tag", "a"], ["tag", "b"]]


def test_latencies_are_measured_finer_than_uvloops_millisecond_clock() -> None:
    """On uvloop (as ``serve`` runs), ``loop.time()`` is libuv's cached millisecond clock: a
    latency read from it is a whole number of milliseconds. The proxy's latencies (its log
    line, its histograms) come from the performance counter instead."""
    latencies: list[float] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            latencies.append(record.__dict__["latency_seconds"])
            latencies.append(record.__dict__["legacy_latency_seconds"])

    async def scenario() -> None:
        async for r in make_rig(mode="legacy"):
            for n in range(20):
                status, _, _ = await fetch(r.client, "GET", r.via_proxy(f"/echo?n={n}"))
                assert status == 200

    handler = Keep()
    requests_log.addHandler(handler)
    level = requests_log.level
    requests_log.setLevel(logging.INFO)
    try:
        run(scenario())
    finally:
        requests_log.removeHandler(handler)
        requests_log.setLevel(level)
    assert len(latencies) == 40
    # a whole number of milliseconds every time: the millisecond clock (chance otherwise: nil)
    whole = [x for x in latencies if abs(x * 1000 - round(x * 1000)) < 1e-9]
    assert len(whole) < len(latencies), latencies
