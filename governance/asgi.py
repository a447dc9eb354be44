"""ASGI entry point: websockets through Channels, HTTP through Django's WSGI handler.

Why HTTP is not served by Django's ASGIHandler: Warden's views are synchronous
(DRF, the ORM, the gate). Under ASGIHandler every request crosses between the
event loop and worker threads several times (middleware, signals, the view)
and gets a fresh thread, hence a fresh database connection. Measured in
process on the 2-core machine: /healthz 4.2 ms through ASGIHandler against
1.0 ms through one hop into Django's WSGI handler. So HTTP requests take one
hop onto a fixed pool of threads (WARDEN_HTTP_THREADS), where the WSGI handler
runs them and persistent database connections are reused per thread.
Websockets (Channels consumers) are async and stay on the event loop.
"""

import asyncio
import json
import os
import re
from urllib.parse import parse_qs

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "governance.settings")
get_asgi_application()  # sets Django up before anything imports models

from asgiref.sync import sync_to_async  # noqa: E402
from asgiref.wsgi import WsgiToAsgi, WsgiToAsgiInstance  # noqa: E402
from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.conf import settings  # noqa: E402
from django.contrib.staticfiles.handlers import StaticFilesHandler  # noqa: E402
from django.core.handlers.wsgi import WSGIHandler  # noqa: E402

from governance.routing import websocket_urlpatterns  # noqa: E402
from governance.threads import DaemonThreadPool  # noqa: E402

_run_wsgi_app = WsgiToAsgiInstance.__dict__["run_wsgi_app"].func  # the undecorated body


class _PooledInstance(WsgiToAsgiInstance):
    executor: DaemonThreadPool

    async def run_wsgi_app(self, body):
        return await sync_to_async(_run_wsgi_app, thread_sensitive=False, executor=self.executor)(self, body)


def _closing(wsgi_application):
    """Call the response's close() when it is done, as PEP 3333 asks of a server.

    asgiref's WsgiToAsgi never does, so Django's request_finished never fired:
    database connections were not given back at the end of a request and a
    FileResponse's file stayed open until garbage collection.
    """

    def application(environ, start_response):
        result = wsgi_application(environ, start_response)
        try:
            yield from result
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()

    return application


class WsgiOnThreadPool(WsgiToAsgi):
    """Run a WSGI application for each HTTP request on a fixed thread pool."""

    def __init__(self, wsgi_application, threads: int):
        super().__init__(_closing(wsgi_application))
        self.executor = DaemonThreadPool(max_workers=threads, thread_name_prefix="warden-http")

    async def __call__(self, scope, receive, send):
        instance = _PooledInstance(self.wsgi_application)
        instance.executor = self.executor
        await instance(scope, receive, send)


class AwaitDecision:
    """`GET /api/v1/actions/{id}/?wait=N`: answer when a pending approval is decided, or after N seconds.

    The request is read through the ordinary view (authentication, permission,
    problem answers, serialisation: nothing written twice) on the thread pool;
    if the action is still pending approval, the wait happens here on the
    event loop, holding no thread, until the decision arrives on the channel
    layer group `action.<id>` (governance.approval_notices) or the time is up;
    then the view is read once more. The group is joined before the first read,
    so a decision made in between is not missed. Without Redis the first
    answer is given at once.
    """

    PATH = re.compile(r"^/api/v1/actions/([0-9a-fA-F-]{36})/$")

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        match = self.PATH.match(scope.get("path", "")) if scope["type"] == "http" and scope.get("method") == "GET" else None
        wait = self._wait(scope) if match else 0
        if not wait:
            return await self.app(scope, receive, send)
        from channels.layers import get_channel_layer

        from governance.approval_notices import action_group

        layer, channel, group = get_channel_layer(), None, action_group(match.group(1).lower())
        try:
            channel = await layer.new_channel()
            await layer.group_add(group, channel)
        except Exception:  # Redis down: answer with what PostgreSQL says now
            channel = None
        try:
            answer = await self._read(scope)
            if channel is not None and answer.pending:
                try:
                    await asyncio.wait_for(layer.receive(channel), timeout=wait)
                except Exception:  # the time is up, or Redis went away: PostgreSQL has the answer either way
                    pass
                answer = await self._read(scope)
        finally:
            if channel is not None:
                try:
                    await layer.group_discard(group, channel)
                except Exception:
                    pass
        for message in answer.messages:
            await send(message)

    @staticmethod
    def _wait(scope) -> int:
        """The wait asked for, when it is a whole number of 1..30 seconds (the view answers anything else)."""
        values = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("wait", [])
        return int(values[-1]) if values and values[-1].isdigit() and 1 <= int(values[-1]) <= 30 else 0

    async def _read(self, scope) -> "_Answer":
        answer = _Answer()

        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        await self.app(scope, receive, answer.collect)
        return answer


class _Answer:
    """An HTTP response collected instead of sent."""

    def __init__(self):
        self.messages: list[dict] = []

    async def collect(self, message):
        self.messages.append(message)

    @property
    def pending(self) -> bool:
        start = next((m for m in self.messages if m["type"] == "http.response.start"), None)
        if start is None or start["status"] != 200:
            return False
        body = b"".join(m.get("body", b"") for m in self.messages if m["type"] == "http.response.body")
        try:
            return json.loads(body).get("outcome") == "pending_approval"
        except (ValueError, AttributeError):
            return False


# Static files (our CSS, vendored htmx, Swagger UI) come from the app itself:
# no CDN, no separate file server needed for a console.
# The gateway (agents/gateway/app.py) answers /v1/ on the event loop: it streams and waits for people
# without holding a thread.
from agents.gateway.app import Gateway  # noqa: E402

http = Gateway(AwaitDecision(WsgiOnThreadPool(StaticFilesHandler(WSGIHandler()), threads=settings.WARDEN_HTTP_THREADS)),
               threads=settings.WARDEN_HTTP_THREADS)

application = ProtocolTypeRouter(
    {
        "http": http,
        "websocket": AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)
