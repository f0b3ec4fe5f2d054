"""A reverse proxy on 127.0.0.1 for the tests: what nginx or Caddy does in front of
``labeler app --sign-in`` (HTTP and the app's websocket, ``X-Forwarded-For`` appended),
built from what the app's own stack installs (Starlette, uvicorn, websockets).

Test clients all connect from 127.0.0.1; a client may name the address the proxy should
see it from in an ``X-Test-Client`` header (a browser context's extra header), as clients
on different machines would be seen. ``media_needs_cookie``: the README's rule that lets
``/media/`` through only with a session cookie.

>>> with reverse_proxy("http://127.0.0.1:8600") as url: ...  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

from appserver import free_port

HOP = {"host", "content-length", "transfer-encoding", "connection", "accept-encoding",
       "x-test-client", "upgrade", "keep-alive"}  # fmt: skip


def _client(headers, peer: str) -> str:
    return headers.get("x-test-client") or peer


def _forwarded(headers, peer: str) -> str:
    client = _client(headers, peer)
    before = headers.get("x-forwarded-for")
    return f"{before}, {client}" if before else client


def make_app(upstream: str, *, media_needs_cookie: bool = False):
    import websockets
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route, WebSocketRoute

    async def http(request):
        if (
            media_needs_cookie
            and request.url.path.startswith("/media/")
            and not request.cookies.get("labeler_session")
        ):
            return Response("no session", status_code=403)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
        headers["x-forwarded-for"] = _forwarded(request.headers, request.client.host)
        body = await request.body()
        query = f"?{request.url.query}" if request.url.query else ""

        def fetch() -> tuple[int, list[tuple[str, str]], bytes]:
            req = urllib.request.Request(
                upstream + request.url.path + query, data=body or None,
                method=request.method, headers=headers,
            )  # fmt: skip
            try:
                with urllib.request.urlopen(req, timeout=60) as r:
                    return r.status, list(r.headers.items()), r.read()
            except urllib.error.HTTPError as e:
                return e.code, list(e.headers.items()), e.read()

        status, got, data = await asyncio.to_thread(fetch)
        resp = Response(data, status_code=status)
        resp.raw_headers.extend(
            (k.lower().encode(), v.encode()) for k, v in got if k.lower() not in HOP
        )
        return resp

    async def ws(socket):
        protocols = [
            p.strip() for p in socket.headers.get("sec-websocket-protocol", "").split(",")
            if p.strip()
        ]  # fmt: skip
        headers = {"X-Forwarded-For": _forwarded(socket.headers, socket.client.host),
                   "Origin": upstream}  # fmt: skip
        if socket.headers.get("cookie"):
            headers["Cookie"] = socket.headers["cookie"]
        target = upstream.replace("http://", "ws://") + socket.url.path
        async with websockets.connect(
            target, additional_headers=headers, subprotocols=protocols or None, max_size=None
        ) as up:
            await socket.accept(subprotocol=up.subprotocol)

            async def down() -> None:
                async for m in up:
                    if isinstance(m, bytes):
                        await socket.send_bytes(m)
                    else:
                        await socket.send_text(m)

            async def upward() -> None:
                while True:
                    msg = await socket.receive()
                    if msg["type"] == "websocket.disconnect":
                        break
                    await up.send(msg["bytes"] if msg.get("bytes") is not None else msg["text"])
                await up.close()

            await asyncio.gather(down(), upward(), return_exceptions=True)

    methods = ["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"]
    return Starlette(
        routes=[
            WebSocketRoute("/_stcore/stream", ws),
            Route("/{path:path}", http, methods=methods),
        ]
    )


@contextlib.contextmanager
def reverse_proxy(upstream: str, *, media_needs_cookie: bool = False) -> Iterator[str]:
    """Serve a proxy of ``upstream`` on a free 127.0.0.1 port; yields its URL."""
    import uvicorn

    port = free_port()
    config = uvicorn.Config(
        make_app(upstream, media_needs_cookie=media_needs_cookie), host="127.0.0.1",
        port=port, log_level="warning", ws="websockets-sansio", lifespan="off",
    )  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="test-proxy", daemon=True)
    thread.start()
    end = time.time() + 30
    while not server.started:
        if time.time() > end or not thread.is_alive():
            raise RuntimeError("the test proxy did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
