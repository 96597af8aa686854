"""The composed sidecar: started from Settings in shadow mode against a real legacy server and
PostgreSQL, a mapped request ends up in the mirror stream; a bad start leaves nothing running."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from sidecar.app import Sidecar
from sidecar.config import DatabaseSettings, ProxySettings, Settings
from sidecar.errors import MappingError

EXAMPLE = Path(__file__).parents[2] / "config" / "mappings" / "example-legacy.toml"


async def legacy(request: web.Request) -> web.Response:
    return web.json_response({"payment_id": "p-1"}, status=201)


async def test_a_shadowed_request_reaches_the_mirror_stream(
    settings: Settings, db: DatabaseSettings, conn: asyncpg.Connection
) -> None:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", legacy)
    server = TestServer(app)
    await server.start_server()
    proxy = ProxySettings(
        legacy_url=str(server.make_url("")).rstrip("/"),
        port=0,
        mode="shadow",
        mapping=str(EXAMPLE),
    )
    sidecar = Sidecar(replace(settings, database=db, proxy=proxy))
    await sidecar.start()
    try:
        async with aiohttp.ClientSession() as client:
            url = f"http://127.0.0.1:{sidecar.port}/v1/accounts/acc-1/payments"
            async with client.post(url, json={"amount": {"value": "1.00"}}) as response:
                assert response.status == 201
                assert await response.json() == {"payment_id": "p-1"}
    finally:
        await sidecar.stop()
        await server.close()
    rows = await conn.fetch("SELECT kind, route FROM mirror_events ORDER BY seq")
    assert [(r["kind"], r["route"]) for r in rows] == [
        ("intent", "payment"),
        ("outcome", "payment"),
    ]


async def test_a_bad_mapping_stops_start_up_with_nothing_left_running(
    settings: Settings, db: DatabaseSettings, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[[route]]\nname = 'x'\n")
    proxy = ProxySettings(port=0, mode="shadow", mapping=str(bad))
    sidecar = Sidecar(replace(settings, database=db, proxy=proxy))
    with pytest.raises(MappingError, match=r"bad\.toml"):
        await sidecar.start()
    assert sidecar.runner is None
