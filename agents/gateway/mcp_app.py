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
import json
import logging
import re
import time
import weakref

import httpx
from django.conf import settings

from ..models import MCP_SERVER_NAME
from . import mcp as calls
from . import services
from .services import GatewayError

logger = logging.getLogger(__name__)

PREFIX = "/mcp/"
# HTTP statuses that say the request was refused before anything ran: not charged. (500, 502 and 504 are.)
NOT_RUN_STATUSES = {400, 401, 403, 404, 405, 406, 409, 413, 415, 422, 429, 503}


def _server():
    from mcp import types
    from mcp.server.lowlevel import Server
    from mcp.shared.exceptions import McpError

    server = Server("warden", instructions="Warden's governed MCP gateway: every tool call is judged, priced and "
                                           "audited by Warden before it reaches the tool's server.")

    def warden():
        request = server.request_context.request
        return request.scope["warden"]

    async def list_tools(request: types.ListToolsRequest) -> types.ServerResult:
        state = warden()
        try:
            listed = await state["front"].thread(state, calls.tools_for, state["caller"], state["server"])
        except Exception:
            logger.exception("MCP gateway listing failed")
            raise McpError(types.ErrorData(code=types.INTERNAL_ERROR, message="Warden could not list the tools.")) \
                from None
        return types.ServerResult(types.ListToolsResult(tools=[
            types.Tool(name=tool["name"], description=tool["description"] or None, inputSchema=tool["inputSchema"])
            for tool in listed]))

    # Handlers of Warden's own, not the SDK's decorators: its call_tool looks tools up in a cache shared by every
    # agent and server (a miss lists all of them again) and checks arguments itself; Warden checks each call
    # against the registry, before the gate.
    async def call_tool(request: types.CallToolRequest) -> types.ServerResult:
        state = warden()
        try:
            result = await state["front"].call(state, request.params.name, request.params.arguments)
        except GatewayError as error:
            result = _error_result(error)
        except Exception:
            logger.exception("MCP gateway call failed")
            result = _error_result(GatewayError(500, "internal_error", "Warden could not handle this call."))
        return types.ServerResult(result)

    server.request_handlers[types.ListToolsRequest] = list_tools
    server.request_handlers[types.CallToolRequest] = call_tool
    return server


def _error_result(error: GatewayError):
    from mcp import types

    detail = {"type": error.kind, "message": error.message, "status": error.status,
              **{k: v for k, v in error.extra.items() if k in ("reasons", "action_id")}}
    return types.CallToolResult(content=[types.TextContent(type="text", text=error.message)], isError=True,
                                _meta={"warden/error": detail})


class LazyManagers:
    """The SDK's stateless session manager for an MCP server, one per event loop, started on first use: the
    manager runs a task group for the life of the loop, and Warden's ASGI app has no lifespan."""

    def __init__(self, server):
        self.server = server
        self._managers = weakref.WeakKeyDictionary()  # event loop -> (manager, its task, started)

    async def get(self):
        from mcp.server.streamable_http_manager import StreamableHTTPSessionManager

        loop = asyncio.get_running_loop()
        held = self._managers.get(loop)
        if held is not None and held[1].done():  # its task group ended (an error): start another
            if not held[1].cancelled() and held[1].exception() is not None:
                logger.error("MCP session manager stopped", exc_info=held[1].exception())
            held = None
        if held is None:
            manager = StreamableHTTPSessionManager(app=self.server, stateless=True, json_response=True,
                                                   max_request_body_size=settings.WARDEN_GATEWAY_MAX_BODY)
            started = asyncio.Event()

            async def keep():
                async with manager.run():
                    started.set()
                    await asyncio.Event().wait()  # until the loop ends

            held = self._managers[loop] = (manager, loop.create_task(keep()), started)
        if not held[2].is_set():  # starting: wait for it, or for its failure
            waiting = asyncio.ensure_future(held[2].wait())
            await asyncio.wait([waiting, held[1]], return_when=asyncio.FIRST_COMPLETED)
            if not held[2].is_set():
                waiting.cancel()
                raise GatewayError(503, "unavailable", "Warden's MCP gateway could not start; try again.")
        return held[0]


class McpFront:
    """Authentication and routing in front of the SDK's session manager."""

    def __init__(self, gateway):
        self.gateway = gateway
        self.server = _server()
        self.managers = LazyManagers(self.server)

    async def __call__(self, scope, receive, send, headers: dict, meta: dict):
        from .app import _read_body

        name = scope["path"][len(PREFIX):].strip("/")
        if not re.match(MCP_SERVER_NAME, name):
            raise GatewayError(404, "not_found", "Use /mcp/<server>/ with the name of an MCP server registered with "
                                                 "Warden.")
        if scope["method"] != "POST":
            # Stateless: every message is a POST answered in JSON; no standing streams, no sessions to end.
            raise GatewayError(405, "method_not_allowed", "Warden's MCP gateway takes POST (Streamable HTTP, "
                                                          "stateless, JSON answers).")
        caller = await self.gateway._thread(services.authenticate, headers.get("authorization", ""), meta)
        await self.gateway._thread(calls.server_active, name)
        body = await _read_body(receive, settings.WARDEN_GATEWAY_MAX_BODY)
        try:
            json.loads(body)
        except (ValueError, RecursionError):  # the SDK answers a parse error, but not a nesting too deep
            raise GatewayError(400, "parse_error", "The body is not a JSON-RPC message Warden can read.") from None
        sent = False

        async def replay():
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        from .app import _CORRELATION

        state = {"caller": caller, "server": name, "front": self, "correlation": _CORRELATION.get(None)}
        await (await self.managers.get()).handle_request({**scope, "warden": state}, replay, send)

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
        from mcp import ClientSession, types
        from mcp.client.streamable_http import streamable_http_client
        from mcp.shared.exceptions import McpError

        from governance import metrics

        action_id = call.action.pk
        timeout = dt.timedelta(seconds=call.timeout)
        sent = False
        began = time.perf_counter()
        try:
            async with httpx.AsyncClient(headers={**call.headers, "X-Warden-Action": str(action_id)},
                                         timeout=httpx.Timeout(call.timeout, connect=min(10, call.timeout)),
                                         follow_redirects=False) as http:
                async with streamable_http_client(call.url, http_client=http) as (read, write, _):
                    async with ClientSession(read, write, read_timeout_seconds=timeout) as session:
                        await asyncio.wait_for(session.initialize(), timeout=call.timeout)
                        sent = True
                        # The request itself, not ClientSession.call_tool: that one asks the server for its tool
                        # list again to check the answer (another call upstream, which could fail after the tool ran).
                        result = await session.send_request(
                            types.ClientRequest(types.CallToolRequest(params=types.CallToolRequestParams(
                                name=call.tool, arguments=call.arguments))),
                            types.CallToolResult, request_read_timeout_seconds=timeout)
        except BaseException as raised:
            error = _find(raised, McpError)
            code = error.error.code if error is not None else None
            refused = _find(raised, httpx.HTTPStatusError)
            status = refused.response.status_code if refused is not None else None
            # Never asked (no connection, no session), refused at the door (429, 503, a 4xx: a bad credential,
            # an unknown path), or refused as a request the tool never ran on (unknown method or tool, bad
            # parameters): nothing was used. Anything else after the call was sent (an error answer, a 500,
            # 502 or 504 from the server or a proxy, a timeout, a broken connection): the tool may have run, or
            # may be running, so the call is charged.
            # (An HTTP 404 after initialize comes from the SDK as code +32600, "session terminated".)
            charged = sent and status not in NOT_RUN_STATUSES and code not in (
                types.METHOD_NOT_FOUND, types.INVALID_PARAMS, types.INVALID_REQUEST, -types.INVALID_REQUEST)
            metrics.upstream("mcp", call.server, time.perf_counter() - began,
                             str(status) if status else "timeout" if _find(raised, TimeoutError) or code ==
                             httpx.codes.REQUEST_TIMEOUT else "error")
            settling = self.thread(state, services.settle, action_id, succeeded=False,
                                   usage={"calls": 1 if charged else 0}, source="warden", upstream_status=status)
            if _find(raised, asyncio.CancelledError) is not None or not isinstance(raised, Exception):
                await asyncio.shield(settling)
                raise
            logger.info("MCP upstream %s failed: %r", call.server, raised)
            await settling
            if status is not None:  # the upstream's status, as it said it
                raise GatewayError(status if status >= 400 else 502, "upstream_error",
                                   f"{call.server} answered HTTP {status}.", action_id=str(action_id)) from None
            if error is not None and code != httpx.codes.REQUEST_TIMEOUT:
                raise GatewayError(502, "upstream_error", f"{call.server} answered with an error: "
                                                          f"{error.error.message[:300]}", action_id=str(action_id)) from None
            timed_out = error is not None or _find(raised, TimeoutError, httpx.TimeoutException) is not None
            raise GatewayError(504 if timed_out else 502, "upstream_timeout" if timed_out else "upstream_unavailable",
                               f"{call.server} did not answer in time." if timed_out else
                               f"{call.server} could not be reached or broke off the call.",
                               action_id=str(action_id)) from None
        metrics.upstream("mcp", call.server, time.perf_counter() - began, "tool_error" if result.isError else None)
        # A tool error (isError) is the tool's own answer: it ran, so the call is charged; the Action failed.
        await self.thread(state, services.settle, action_id, succeeded=not result.isError, usage={"calls": 1},
                          source="warden")
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
