"""The demo's CRM as an MCP server (built with the official SDK), for `make run` to show the MCP gateway.

It stands for a company system Warden governs access to: it is served at `/demo/mcp/` only when
WARDEN_DEMO_MCP_KEY is set (devstack does for `make run`), and answers only that key, which Warden holds as
the server's credential (WARDEN_MCP_UPSTREAM_KEYS): agents cannot call it directly with their Warden keys,
only through `/mcp/crm/`. Its customers are demo_data/customers.jsonl (WARDEN_DATA_DIR).
"""

from __future__ import annotations

import hmac
import json
import threading
from pathlib import Path

from django.conf import settings
from mcp.server.fastmcp import FastMCP

NOTES: list[dict] = []  # what add_note received (kept in memory: it is a demo)
_LOCK = threading.Lock()


def _customers() -> list[dict]:
    path = Path(settings.WARDEN_DATA_DIR) / "customers.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _build() -> FastMCP:
    crm = FastMCP("crm", instructions="The company's customer records (demo).")

    @crm.tool(description="One customer's record: company, contact, e-mail, plan, seats.")
    def lookup_customer(customer_id: str) -> dict:
        for row in _customers():
            if row["id"] == customer_id:
                return row
        raise ValueError(f"no customer {customer_id}")

    @crm.tool(description="Add a note to a customer's record.")
    def add_note(customer_id: str, note: str) -> str:
        with _LOCK:
            NOTES.append({"customer_id": customer_id, "note": note[:2000]})
        return f"note added to {customer_id}"

    @crm.tool(description="Every customer record at once.")
    def export_customers() -> list[dict]:
        return _customers()

    return crm


class DemoCrm:
    """ASGI: the demo CRM's Streamable HTTP endpoint, behind its own key."""

    def __init__(self):
        from .mcp_app import LazyManagers

        self.managers = LazyManagers(_build()._mcp_server)

    async def __call__(self, scope, receive, send, headers: dict):
        secret = settings.WARDEN_DEMO_MCP_KEY
        given = headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not secret or not hmac.compare_digest(given.encode(), secret.encode()):
            await send({"type": "http.response.start", "status": 401,
                        "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": b'{"error": "the demo CRM answers Warden only"}'})
            return
        await (await self.managers.get()).handle_request(scope, receive, send)
