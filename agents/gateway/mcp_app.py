"""The MCP gateway's event-loop side: Warden as an MCP server (Streamable HTTP, the official `mcp` SDK) at
`/mcp/<server>/`, in front of the MCP servers an admin registered.

    POST /mcp/<server>/   JSON-RPC: initialize, tools/list, tools/call, ping (stateless, JSON answers)

Each HTTP request is authenticated (the agent key as a Bearer token; bad keys are counted as on the REST API)
before the SDK sees it. `tools/list` lists the registered tools the agent could be allowed; `tools/call`
asks the gate (agents/gateway/mcp.py), waits for a person on the event loop when the gate escalates, and
forwards an allowed call with the SDK's client to the registered URL; the Action is completed with the
outcome. What the agent gets is the upstream's result unchanged, with `_meta["warden/action_id"]`; a denial,
a call still waiting for a person, or an upstream failure is a tool error result (`isError`) that says why,
which is how MCP hands failures to the model, with `_meta["warden/error"]` for programs.

Stateless, so any web process answers any request (no session affinity behind a load balancer).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import weakref

import httpx
from django.conf import settings

from . import mcp as calls
from . import services
from .services import GatewayError

logger = logging.getLogger(__name__)

PREFIX = "/mcp/"


def _server():
    from mcp import types
    from mcp.server.lowlevel import Server

    server = Server("warden", instructions="Warden's governed MCP gateway: every tool call is judged, priced and "
                                           "audited by Warden before it reaches the tool's server.")

    def warden():
        request = server.request_context.request
        return request.scope["warden"]

    @server.list_tools()
    async def list_tools() -> list[types.Tool]:
        state = warden()
        listed = await state["front"].thread(state, calls.tools_for, state["caller"], state["server"])
        return [types.Tool(name=tool["name"], description=tool["description"] or None, inputSchema=tool["inputSchema"])
                for tool in listed]

    @server.call_tool(validate_input=False)  # Warden checks the registered schema itself, before the gate
    async def call_tool(name: str, arguments: dict | None) -> types.CallToolResult:
        state = warden()
        try:
            return await state["front"].call(state, name, arguments)
        except GatewayError as error:
            return _error_result(error)
        except Exception:
            logger.exception("MCP gateway call failed")
            return _error_result(GatewayError(500, "internal_error", "Warden could not handle this call."))

    return server


def _error_result(error: GatewayError):
    from mcp import types

    detail = {"type": error.kind, "message": error.message, "status": error.status,
              **{k: v for k, v in error.extra.items() if k in ("reasons", "action_id")}}
    return types.CallToolResult(content=[types.TextContent(type="text", text=error.message)], isError=True,
                                _meta={"warden/error": detail})


class McpFront:
    """Authentication and routing in front of the SDK's session manager (one per event loop, started on first
    use: the manager runs a task group for the life of the loop, and Warden's ASGI app has no lifespan)."""

    def __init__(self, gateway):
        self.gateway = gateway
        self.server = _server()
        self._managers = weakref.WeakKeyDictionary()  # event loop -> (manager, its task)

    async def _manager(self):
        from mcp.server.streamable_http_manager import StreamableHTTPSessionManager

        loop = asyncio.get_running_loop()
        held = self._managers.get(loop)
        if held is None:
            manager = StreamableHTTPSessionManager(app=self.server, stateless=True, json_response=True,
                                                   max_request_body_size=settings.WARDEN_GATEWAY_MAX_BODY)
            started = asyncio.Event()

            async def keep():
                async with manager.run():
                    started.set()
                    await asyncio.Event().wait()  # until the loop ends

            held = self._managers[loop] = (manager, loop.create_task(keep()), started)
        await held[2].wait()
        return held[0]

    async def __call__(self, scope, receive, send, headers: dict, meta: dict):
        name = scope["path"][len(PREFIX):].strip("/")
        if not name or "/" in name:
            raise GatewayError(404, "not_found", "Use /mcp/<server>/ with the name of an MCP server registered with "
                                                 "Warden.")
        caller = await self.gateway._thread(services.authenticate, headers.get("authorization", ""), meta)
        await self.gateway._thread(calls.server_active, name)
        state = {"caller": caller, "server": name, "front": self, "correlation": services_correlation()}
        await (await self._manager()).handle_request({**scope, "warden": state}, receive, send)

    async def thread(self, state, function, *args, **kwargs):
        from .app import _CORRELATION

        _CORRELATION.set(state["correlation"])  # the SDK runs handlers in its own tasks: carry the request's id
        return await self.gateway._thread(function, *args, **kwargs)

    async def call(self, state, name: str, arguments):
        call = await self.thread(state, calls.admit_call, state["caller"], state["server"], name, arguments)
        if not call.claimed:
            action = call.action
            if action.outcome == "pending_approval":
                action = await self.gateway._await_decision(action)
            problem = services.verdict(action)
            if problem is not None:
                if problem.kind == "warden_pending_approval":
                    problem.message = ("A person must approve this call first (action "
                                       f"{action.pk}). Call the tool again with the same arguments once it is "
                                       "approved.")
                raise problem
            call.action = action
            await self.thread(state, calls.claim, call)
        return await self._forward(state, call)

    async def _forward(self, state, call):
        from mcp import ClientSession
        from mcp.client.streamable_http import streamable_http_client
        from mcp.shared.exceptions import McpError

        action_id = call.action.pk
        sent = False
        try:
            async with httpx.AsyncClient(headers={**call.headers, "X-Warden-Action": str(action_id)},
                                         timeout=httpx.Timeout(call.timeout, connect=min(10, call.timeout)),
                                         follow_redirects=False) as http:
                async with streamable_http_client(call.url, http_client=http) as (read, write, _):
                    async with ClientSession(read, write) as session:
                        await asyncio.wait_for(session.initialize(), timeout=call.timeout)
                        sent = True
                        result = await session.call_tool(call.tool, call.arguments,
                                                         read_timeout_seconds=dt.timedelta(seconds=call.timeout))
        except BaseException as raised:
            error = _find(raised, McpError)
            protocol = error is not None and error.error.code != httpx.codes.REQUEST_TIMEOUT
            if isinstance(raised, asyncio.CancelledError):
                await asyncio.shield(self.thread(state, services.settle, action_id, succeeded=False,
                                                 usage={"calls": 1 if sent else 0}, source="warden"))
                raise
            # Never asked (no connection, no session), or answered with a protocol error (the tool did not run):
            # nothing was used. Asked and the answer lost (a timeout, a broken connection): the tool may have run,
            # so the call is charged.
            logger.info("MCP upstream %s failed: %r", call.server, raised)
            await self.thread(state, services.settle, action_id, succeeded=False,
                              usage={"calls": 1 if sent and not protocol else 0}, source="warden")
            if not isinstance(raised, Exception):
                raise
            if protocol:
                raise GatewayError(502, "upstream_error", f"{call.server} answered with an error: "
                                                          f"{error.error.message[:300]}", action_id=str(action_id)) from None
            timeout = error is not None or _find(raised, TimeoutError, httpx.TimeoutException) is not None
            raise GatewayError(504 if timeout else 502, "upstream_timeout" if timeout else "upstream_unavailable",
                               f"{call.server} did not answer in time." if timeout else
                               f"{call.server} could not be reached or broke off the call.",
                               action_id=str(action_id)) from None
        # A tool error (isError) is the tool's answer: the Action failed and nothing is charged.
        await self.thread(state, services.settle, action_id, succeeded=not result.isError,
                          usage={"calls": 0 if result.isError else 1}, source="warden")
        result.meta = {**(result.meta or {}), "warden/action_id": str(action_id)}
        return result


def _find(error: BaseException, *kinds):
    """The first of these kinds of error in it (perhaps inside an exception group from the SDK's task groups)."""
    if isinstance(error, kinds):
        return error
    for inner in getattr(error, "exceptions", ()):
        found = _find(inner, *kinds)
        if found is not None:
            return found
    return None


def services_correlation():
    from .app import _CORRELATION

    return _CORRELATION.get(None)
