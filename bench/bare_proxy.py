"""The issue's reference point for saturation: a bare aiohttp proxy with a fire-and-forget shadow.

It forwards every request to the upstream and returns its answer, and sends a copy of each
request to the upstream's mirror sink without waiting for it: no capture, no mapping, no
hop-by-hop handling, no limits. It runs on the sidecar's event loop (uvloop where installed).
``bench/proxy.py`` runs it beside the sidecar and nginx so the floor any Python proxy starts
from is measured in the same run, not assumed.

    python bench/bare_proxy.py PORT UPSTREAM_URL
"""

from __future__ import annotations

import asyncio
import sys

import aiohttp
from aiohttp import web
from sidecar.runtime import run

from _serving import serve_forever


async def serve(port: int, upstream: str) -> None:
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256))
    shadows: set[asyncio.Task[None]] = set()

    async def shadow(body: bytes) -> None:
        try:
            async with session.post(f"{upstream}/mirror-sink", data=body) as answer:
                await answer.read()
        except aiohttp.ClientError:
            pass

    async def forward(request: web.Request) -> web.Response:
        body = await request.read()
        task = asyncio.create_task(shadow(body))
        shadows.add(task)
        task.add_done_callback(shadows.discard)
        async with session.request(
            request.method, f"{upstream}{request.path_qs}", data=body, headers=request.headers
        ) as answer:
            return web.Response(
                status=answer.status, body=await answer.read(), content_type=answer.content_type
            )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", forward)
    try:
        await serve_forever(app, port)
    finally:
        await session.close()


if __name__ == "__main__":
    # the same event loop as the sidecar's commands (uvloop where installed), for a fair floor
    run(serve(int(sys.argv[1]), sys.argv[2]))
