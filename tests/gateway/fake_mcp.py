"""A local MCP server built with the official SDK (FastMCP, Streamable HTTP) that records every tool call it
receives: the gateway's tests show what reached it, and that nothing the gate did not allow ever did."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

from mcp.server.fastmcp import Context, FastMCP
from pydantic import BaseModel


class Customer(BaseModel):
    id: str
    name: str
    segment: str


class FakeMcp:
    def __init__(self):
        self.calls: list[dict] = []  # {"tool", "arguments", "action", "authorization"}
        self.fail_status: int | None = None  # answer tools/call with this HTTP status (the tool does not run)
        self.refused = 0
        self.lock = threading.Lock()
        self.url = ""

    def record(self, ctx, tool: str, arguments: dict) -> None:
        request = ctx.request_context.request
        with self.lock:
            self.calls.append({"tool": tool, "arguments": arguments,
                               "action": request.headers.get("x-warden-action"),
                               "authorization": request.headers.get("authorization")})


def _app(fake: FakeMcp):
    server = FastMCP("crm", stateless_http=True, json_response=True, streamable_http_path="/mcp")

    @server.tool(description="The customer record of one customer id.")
    def lookup_customer(customer_id: str, ctx: Context) -> Customer:
        fake.record(ctx, "lookup_customer", {"customer_id": customer_id})
        return Customer(id=customer_id, name="Ada Example", segment="new")

    @server.tool(description="Send a welcome email.")
    def send_welcome(email: str, text: str, ctx: Context) -> str:
        fake.record(ctx, "send_welcome", {"email": email, "text": text})
        return f"sent to {email}"

    @server.tool(description="Takes its time.")
    async def slow(seconds: float, ctx: Context) -> str:
        import anyio

        fake.record(ctx, "slow", {"seconds": seconds})
        await anyio.sleep(seconds)
        return "done"

    @server.tool(description="Always fails.")
    def broken(ctx: Context) -> str:
        fake.record(ctx, "broken", {})
        raise RuntimeError("the CRM is down for maintenance")

    @server.tool(description="Not registered with Warden: agents must never reach it.")
    def delete_everything(ctx: Context) -> str:
        fake.record(ctx, "delete_everything", {})
        return "deleted"

    app = server.streamable_http_app()

    async def failing(scope, receive, send):
        """Answers tools/call with fake.fail_status when set, before the tool runs; else the SDK's app."""
        if scope["type"] != "http" or not fake.fail_status or scope["method"] != "POST":
            return await app(scope, receive, send)
        body, more = b"", True
        while more:
            message = await receive()
            body, more = body + message.get("body", b""), message.get("more_body", False)
        if b'"tools/call"' in body:
            fake.refused += 1
            await send({"type": "http.response.start", "status": fake.fail_status,
                        "headers": [(b"content-type", b"application/json")]})
            return await send({"type": "http.response.body", "body": b'{"error": "busy"}'})
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await app(scope, replay, send)

    return app, failing


@contextlib.contextmanager
def fake_mcp():
    import uvicorn

    fake = FakeMcp()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app, failing = _app(fake)

    async def asgi(scope, receive, send):
        if scope["type"] == "lifespan":
            return await app(scope, receive, send)
        return await failing(scope, receive, send)

    server = uvicorn.Server(uvicorn.Config(asgi, host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="on", timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    fake.url = f"http://127.0.0.1:{port}/mcp"
    try:
        yield fake
    finally:
        server.should_exit = True
        thread.join(10)
