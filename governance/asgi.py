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

import os
from concurrent.futures import ThreadPoolExecutor

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

_run_wsgi_app = WsgiToAsgiInstance.__dict__["run_wsgi_app"].func  # the undecorated body


class _PooledInstance(WsgiToAsgiInstance):
    executor: ThreadPoolExecutor

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
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="warden-http")

    async def __call__(self, scope, receive, send):
        instance = _PooledInstance(self.wsgi_application)
        instance.executor = self.executor
        await instance(scope, receive, send)


# Static files (our CSS, vendored htmx, Swagger UI) come from the app itself:
# no CDN, no separate file server needed for a console.
http = WsgiOnThreadPool(StaticFilesHandler(WSGIHandler()), threads=settings.WARDEN_HTTP_THREADS)

application = ProtocolTypeRouter(
    {
        "http": http,
        "websocket": AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)
