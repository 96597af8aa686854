"""A fast upstream in Python: the fixed answers of ``bench/proxy.py``'s nginx upstream, served
by one aiohttp process on the sidecar's event loop (uvloop where installed).

``bench/proxy.py --upstream python`` runs every target against it instead of nginx, to show
how far the ratios to nginx-with-mirror depend on the upstream: with nginx answering, every
Python proxy is a small fraction of nginx's mirror; with an upstream that itself costs Python
time per request, the fractions are larger.

    python bench/upstream.py PORT ACCOUNTS_JSON
"""

from __future__ import annotations

import sys
from pathlib import Path

from aiohttp import web
from sidecar.runtime import run

from _serving import serve_forever

PAYMENT = (
    b'{"payment_id": "PAY-1", "status": "completed", '
    b'"amount": {"value": "1.00", "currency": "EUR"}}'
)
BALANCE = b'{"available": {"value": "1000000.00", "currency": "EUR"}}'


async def serve(port: int, accounts: bytes) -> None:

    async def listed(request: web.Request) -> web.Response:
        return web.Response(body=accounts, content_type="application/json")

    async def balance(request: web.Request) -> web.Response:
        return web.Response(body=BALANCE, content_type="application/json")

    async def payment(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=201, body=PAYMENT, content_type="application/json")

    async def sink(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=204)

    app = web.Application()
    app.router.add_get("/v1/accounts", listed)
    app.router.add_get("/v1/accounts/{account}/balance", balance)
    app.router.add_post("/v1/accounts/{account}/payments", payment)
    app.router.add_route("*", "/mirror-sink", sink)
    await serve_forever(app, port)


if __name__ == "__main__":
    run(serve(int(sys.argv[1]), Path(sys.argv[2]).read_bytes()))
