"""Playwright driving Debian's Chromium (no browser download) against live_server."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]
SHOTS = Path(__file__).resolve().parent.parent / "var" / "screenshots"


@contextlib.contextmanager
def chromium():
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop in this thread; the ORM calls the
    # test makes around it are still synchronous and safe.
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    SHOTS.mkdir(parents=True, exist_ok=True)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            try:
                yield browser
            finally:
                browser.close()
                # ORM calls made inside Playwright's greenlet got their own
                # connection; close it so the test database can be dropped.
                from django.db import connections

                connections.close_all()
    finally:
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


def sign_in(page, base_url: str, username: str, password: str) -> None:
    page.goto(f"{base_url}/login/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")


@contextlib.contextmanager
def asgi_server():
    """The real ASGI application (HTTP and websockets) under uvicorn, in a thread, on a free port.

    live_server is WSGI only; the live timeline needs the websocket route. Use it
    in a transactional test: the server's threads read what the test committed.
    """
    import socket
    import threading
    import time

    import uvicorn

    from channels.layers import channel_layers
    from django.db import connections

    from governance.asgi import application

    # A channel layer of its own, bound to this server's event loop: channels_redis refuses a receive() from
    # a second loop while a consumer of an earlier server (or test) still counts as receiving.
    channel_layers.backends.clear()

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings_dict = connections.databases["default"]
    previous = settings_dict["CONN_MAX_AGE"]
    settings_dict["CONN_MAX_AGE"] = 0  # server threads close their connections after each request
    server = uvicorn.Server(uvicorn.Config(application, host="127.0.0.1", port=port, log_level="warning", lifespan="off",
                                           timeout_graceful_shutdown=2))  # an open stream must not keep it up
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        settings_dict["CONN_MAX_AGE"] = previous
        channel_layers.backends.clear()
