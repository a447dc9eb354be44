"""The gateway's event-loop side: an ASGI application in front of Warden's HTTP stack, for `/v1/...`.

    GET  /v1/models              the models this agent may call
    POST /v1/chat/completions    through the gate, then to the model's upstream (streaming or not)
    POST /v1/embeddings          likewise (an llm.call that reads its input and writes no tokens)

An agent points an OpenAI client at Warden (`base_url=<warden>/v1`, `api_key=<its Warden key>`). Each call is
an `llm.call` Action: denied → 403 `warden_denied`; pending a person → waits up to
WARDEN_GATEWAY_APPROVAL_WAIT seconds on the event loop (holding no thread) for the decision, then goes on or
answers 409 `warden_pending_approval` (send it again with the same `Idempotency-Key` header once approved);
allowed → forwarded with Warden's cap on max_tokens and the upstream's key (never the agent's), and completed
with the usage the upstream reports. The upstream's body comes back unchanged, with `X-Warden-Action-Id`.
Upstream errors are returned as the upstream said them; the Action fails (its reservation released, or what
the upstream reports as used settled). A stream is settled with its usage chunk, or with what was counted
when the upstream gives none or the stream breaks.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import math
import time
import weakref

import httpx
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import close_old_connections

from governance import metrics
from governance.context import clean_correlation_id, correlation_scope, new_correlation_id
from governance.errors import RETRY_AFTER, UNAVAILABLE, database_unavailable
from governance.threads import DaemonThreadPool

from . import services
from .mcp_app import PREFIX as MCP_PREFIX
from .mcp_app import McpFront

DEMO_PATH = "/demo/mcp/"
from .services import GatewayError

_CORRELATION: contextvars.ContextVar[str] = contextvars.ContextVar("gateway_correlation")

logger = logging.getLogger(__name__)

PREFIX = "/v1/"


class Gateway:
    def __init__(self, app, threads: int = 4):
        self.app = app
        self.executor = DaemonThreadPool(max_workers=threads, thread_name_prefix="warden-gateway")
        self._clients = weakref.WeakKeyDictionary()  # event loop -> its client
        self.mcp = McpFront(self)
        self._demo = None  # the demo's CRM MCP server (agents/gateway/demo_mcp.py), when WARDEN_DEMO_MCP_KEY is set

    async def _demo_crm(self, scope, receive, send):
        from .demo_mcp import DemoCrm

        if self._demo is None:
            self._demo = DemoCrm()
        headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]}
        await self._demo(scope, receive, send, headers)

    def _client(self) -> httpx.AsyncClient:
        """One HTTP client per event loop, kept: making one loads the CA bundle (tens of milliseconds) and
        a kept one reuses connections to the upstream."""
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None or client.is_closed:
            client = self._clients[loop] = httpx.AsyncClient(follow_redirects=False,
                                                             limits=httpx.Limits(max_connections=200))
        return client

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if path.startswith(DEMO_PATH) and settings.WARDEN_DEMO_MCP_KEY:
            return await self._demo_crm(scope, receive, send)
        if scope["type"] != "http" or not path.startswith((PREFIX, MCP_PREFIX)):
            return await self.app(scope, receive, send)
        try:
            await self._handle(scope, receive, send)
        except GatewayError as error:
            challenge = [(b"www-authenticate", b'Bearer realm="warden"')] if error.status == 401 else []
            await _json(send, error.status, error.body(),
                        headers=[*_action_header(error.extra.get("action_id")), *challenge])
        except Exception as error:  # never a bare 500 page: the client gets the protocol's error shape
            if getattr(error, "warden_database_unavailable", False) or database_unavailable(error):  # fail closed
                logger.warning("gateway: database unavailable: %s", error.__class__.__name__)
                await _json(send, 503, GatewayError(503, "service_unavailable", UNAVAILABLE).body(),
                            headers=[(b"retry-after", RETRY_AFTER.encode())])
                return
            logger.exception("gateway request failed")
            await _json(send, 500, GatewayError(500, "internal_error", "Warden could not handle this call.").body())

    async def _thread(self, function, *args, **kwargs):
        correlation = _CORRELATION.get(None)

        def run():
            close_old_connections()
            try:
                with correlation_scope(correlation):  # the request's id on every event it writes
                    return function(*args, **kwargs)
            except Exception as error:
                # Judged here, in the thread whose connection failed (the event loop's has none to look at).
                error.warden_database_unavailable = database_unavailable(error)
                raise
            finally:
                close_old_connections()

        return await sync_to_async(run, thread_sensitive=False, executor=self.executor)()

    async def _handle(self, scope, receive, send):
        headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]}
        # A correlation id per call, as the middleware gives every other request (a valid X-Request-ID is kept):
        # the decision, the completion and any approval are one trace in the audit timeline.
        _CORRELATION.set(clean_correlation_id(headers.get("x-request-id")) or new_correlation_id())
        path, method = scope["path"], scope["method"]
        peer = scope.get("client") or ("", 0)
        meta = {"REMOTE_ADDR": peer[0], **({"HTTP_X_FORWARDED_FOR": headers["x-forwarded-for"]}
                                           if "x-forwarded-for" in headers else {})}
        if path.startswith(MCP_PREFIX):
            return await self.mcp(scope, receive, send, headers, meta)
        routes = {"/v1/models": "GET", "/v1/chat/completions": "POST", "/v1/embeddings": "POST"}
        if path not in routes:
            raise GatewayError(404, "not_found", f"Warden's gateway does not serve {path}.")
        if method != routes[path]:
            raise GatewayError(405, "method_not_allowed", f"{path} takes {routes[path]}.")
        if path == "/v1/models":
            caller = await self._thread(services.authenticate, headers.get("authorization", ""), meta)
            return await _json(send, 200, await self._thread(services.models_for, caller))
        body = await _read_body(receive, settings.WARDEN_GATEWAY_MAX_BODY)
        # One hop onto a thread: the caller, the gate's decision and, when allowed, the claim to forward it.
        prepared = await self._thread(services.admit, headers.get("authorization", ""), body,
                                      headers.get("idempotency-key"), embeddings=path == "/v1/embeddings",
                                      meta=meta)
        if not prepared.claimed:
            action = prepared.action
            if action.outcome == "pending_approval":
                action = await self._await_decision(action)
            problem = services.verdict(action)
            if problem is not None:
                raise problem
            prepared.action = action
            await self._thread(services.claim, prepared)  # once per Action, even for two requests at one moment
        if prepared.upstream.kind == services.SIMULATED:
            return await self._simulated(prepared, send)
        if prepared.stream:
            return await self._stream(prepared, send)
        return await self._forward(prepared, send)

    async def _await_decision(self, action):
        """Wait on the event loop for a person's decision (the channel layer group `action.<id>`), or the time."""
        from channels.layers import get_channel_layer

        from governance.approval_notices import action_group

        wait = settings.WARDEN_GATEWAY_APPROVAL_WAIT
        layer, channel, group = get_channel_layer(), None, action_group(str(action.pk))
        try:
            channel = await layer.new_channel()
            await layer.group_add(group, channel)
        except Exception:  # Redis down: answer with what PostgreSQL says now
            channel = None
        try:
            action = await self._thread(services.action_now, action.pk)  # decided before we listened?
            if channel is not None and wait > 0 and action.outcome == "pending_approval":
                try:
                    await asyncio.wait_for(layer.receive(channel), timeout=wait)
                except Exception:  # the time is up, or Redis went away: PostgreSQL has the answer either way
                    pass
                action = await self._thread(services.action_now, action.pk)
        finally:
            if channel is not None:
                try:
                    await layer.group_discard(group, channel)
                except Exception:
                    pass
        return action

    def _request(self, prepared):
        upstream = prepared.upstream
        endpoint = "/embeddings" if prepared.kind == "embeddings" else "/chat/completions"
        return (upstream.base_url.rstrip("/") + endpoint,
                {"Authorization": f"Bearer {upstream.api_key or 'none'}", "Content-Type": "application/json",
                 "X-Warden-Action": str(prepared.action.pk)},
                httpx.Timeout(upstream.timeout, connect=min(10.0, upstream.timeout)))

    async def _forward(self, prepared, send):
        url, headers, timeout = self._request(prepared)
        action_id = prepared.action.pk
        began = time.perf_counter()
        try:
            response = await self._client().post(url, content=prepared.payload, headers=headers, timeout=timeout)
        except httpx.HTTPError as error:
            metrics.upstream("gateway", metrics.host(url), time.perf_counter() - began,
                             "timeout" if isinstance(error, httpx.TimeoutException) else "connection")
            # Never sent (no connection): nothing was used. Sent and the answer lost (a read timeout, a dropped
            # connection): the upstream may have done the work and bill it: charge what was reserved.
            sent = not isinstance(error, (httpx.ConnectError, httpx.ConnectTimeout))
            usage = services.reserved_usage(prepared.action) if sent else None
            await self._thread(services.settle, action_id, succeeded=False, usage=usage, source="warden")
            if isinstance(error, httpx.TimeoutException):
                raise GatewayError(504, "upstream_timeout", "The model's upstream did not answer in time.",
                                   action_id=str(action_id)) from None
            raise GatewayError(502, "upstream_unavailable", f"The model's upstream could not be reached: "
                                                            f"{type(error).__name__}.", action_id=str(action_id)) from None
        metrics.upstream("gateway", metrics.host(url), time.perf_counter() - began,
                         str(response.status_code) if response.status_code >= 400 else None)
        payload = _parsed(response.content)
        ok = response.status_code < 400 and isinstance(payload, dict)
        await self._thread(services.settle, action_id, succeeded=ok, usage=services.usage_of(payload),
                           upstream_status=response.status_code)
        await _raw(send, response.status_code, response.content,
                   content_type=response.headers.get("content-type", "application/json"),
                   headers=_action_header(action_id))

    async def _stream(self, prepared, send):
        url, headers, timeout = self._request(prepared)
        action_id = prepared.action.pk
        counted = _StreamCount()
        started, held = False, b""
        began, failure = time.perf_counter(), None
        try:
            async with self._client().stream("POST", url, content=prepared.payload, headers=headers,
                                             timeout=timeout) as response:
                if response.status_code >= 400:
                    failure = str(response.status_code)
                    content = await response.aread()
                    await self._thread(services.settle, action_id, succeeded=False,
                                       usage=services.usage_of(_parsed(content)),
                                       upstream_status=response.status_code)
                    return await _raw(send, response.status_code, content,
                                      content_type=response.headers.get("content-type", "application/json"),
                                      headers=_action_header(action_id))
                await send({"type": "http.response.start", "status": response.status_code,
                            "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"),
                                        *_action_header(action_id)]})
                started = True
                # One chunk behind: the last one (with [DONE]) goes out only after the Action is settled, so
                # a client that has the whole answer finds its cost recorded.
                async for chunk in response.aiter_raw():
                    counted.feed(chunk)
                    if held:
                        await send({"type": "http.response.body", "body": held, "more_body": True})
                    held = chunk
        except asyncio.CancelledError:
            # The server is shutting down under this stream: what was streamed is still charged.
            await asyncio.shield(self._thread(services.settle, action_id, succeeded=False,
                                              usage=counted.usage(prepared), source="warden"))
            raise
        except (httpx.HTTPError, OSError) as error:
            failure = "timeout" if isinstance(error, httpx.TimeoutException) else "broken"
            # Broken (or never started): settle what was streamed, as Warden counted it.
            usage = counted.usage(prepared)
            await self._thread(services.settle, action_id, succeeded=False, usage=usage,
                               source="provider" if counted.reported else "warden")
            if not started:
                status = 504 if isinstance(error, httpx.TimeoutException) else 502
                raise GatewayError(status, "upstream_unavailable", "The model's upstream failed before answering.",
                                   action_id=str(action_id)) from None
            # The client hears it in the stream's own language: an error event (the official clients raise it).
            broken = GatewayError(502, "upstream_stream_broken", "The model's upstream broke off the stream; what "
                                  "was streamed is charged.", action_id=str(action_id))
            tail = (b"" if held.endswith(b"\n\n") or not held else b"\n\n")
            await send({"type": "http.response.body", "more_body": False,
                        "body": held + tail + b"data: " + json.dumps(broken.body()).encode() + b"\n\n"})
            return
        finally:
            metrics.upstream("gateway", metrics.host(url), time.perf_counter() - began, failure)
        await self._thread(services.settle, action_id, succeeded=True, usage=counted.usage(prepared),
                           source="provider" if counted.reported else "warden")
        await send({"type": "http.response.body", "body": held, "more_body": False})

    async def _simulated(self, prepared, send):
        if prepared.kind == "embeddings":
            payload = await self._thread(services.simulated_embeddings, prepared)
            await self._thread(services.settle, prepared.action.pk, succeeded=True, usage=services.usage_of(payload),
                               source="simulated")
            return await _json(send, 200, payload, headers=_action_header(prepared.action.pk))
        payload = await self._thread(services.simulated_completion, prepared)
        usage = services.usage_of(payload)
        await self._thread(services.settle, prepared.action.pk, succeeded=True, usage=usage, source="simulated")
        if not prepared.stream:
            return await _json(send, 200, payload, headers=_action_header(prepared.action.pk))
        text = payload["choices"][0]["message"]["content"]
        base = {"id": payload["id"], "object": "chat.completion.chunk", "created": payload["created"],
                "model": payload["model"]}
        events = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": text},
                                        "finish_reason": None}]},
                  {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
                  {**base, "choices": [], "usage": payload["usage"]}]
        body = b"".join(b"data: " + json.dumps(event).encode() + b"\n\n" for event in events) + b"data: [DONE]\n\n"
        await _raw(send, 200, body, content_type="text/event-stream", headers=_action_header(prepared.action.pk))


class _StreamCount:
    """What a stream carried: the upstream's usage chunk if it sends one, else the content's bytes."""

    def __init__(self):
        self.buffer = b""
        self.reported: dict | None = None
        self.content_bytes = 0

    def feed(self, chunk: bytes) -> None:
        self.buffer += chunk
        *lines, self.buffer = self.buffer.split(b"\n")
        for line in lines:
            line = line.strip()
            if not line.startswith(b"data:") or line == b"data: [DONE]":
                continue
            event = _parsed(line[5:].strip())
            if not isinstance(event, dict):
                continue
            usage = services.usage_of(event)
            if usage:
                self.reported = usage
            for choice in event.get("choices") or []:
                delta = (choice or {}).get("delta") or {}
                for value in (delta.get("content"), delta.get("refusal"), delta.get("reasoning_content"),
                              json.dumps(delta.get("tool_calls")) if delta.get("tool_calls") else None):
                    if isinstance(value, str):
                        self.content_bytes += len(value.encode())

    def usage(self, prepared) -> dict:
        if self.reported:
            return self.reported
        return {"input_tokens": prepared.action.context.get("input_tokens", 0),
                "output_tokens": min(math.ceil(self.content_bytes / 3),
                                     prepared.body.get("max_tokens") or prepared.body.get("max_completion_tokens"))}


def _parsed(raw: bytes):
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        return None


def _action_header(action_id) -> list[tuple[bytes, bytes]]:
    headers = [(b"x-warden-action-id", str(action_id).encode())] if action_id else []
    correlation = _CORRELATION.get(None)
    return headers + ([(b"x-request-id", correlation.encode())] if correlation else [])


async def _read_body(receive, limit: int) -> bytes:
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if len(body) > limit:
            raise GatewayError(413, "request_too_large", f"The request is over {limit} bytes.")
        if not message.get("more_body"):
            return body


async def _json(send, status: int, payload: dict, headers=()) -> None:
    await _raw(send, status, json.dumps(payload).encode(), content_type="application/json", headers=headers)


async def _raw(send, status: int, body: bytes, *, content_type: str, headers=()) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type.encode("latin-1")), *headers]})
    await send({"type": "http.response.body", "body": body, "more_body": False})
