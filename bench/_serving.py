"""What the bench's small aiohttp servers share: serve an application until cancelled."""

from __future__ import annotations

import asyncio

from aiohttp import web


async def serve_forever(app: web.Application, port: int) -> None:
    """Serve ``app`` on 127.0.0.1:``port`` (no access log) until the task is cancelled."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
