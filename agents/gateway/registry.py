"""The registry of MCP servers behind Warden's MCP gateway: what an admin registered, audited.

A server has a name (the gateway's URL is `/mcp/<name>/`), the URL Warden forwards to, and the tools it
offers as Warden forwards them: each tool's input schema (arguments that do not match are refused before
the gate), its price per call (billing.Price, kind tool, `<server>/<tool>`), how sensitive data it may be
sent (governance.DataSink, kind tool, same name) and how sensitive what it returns is. A tool that is not
registered here (or not active) is neither listed nor forwarded, whatever the server itself offers.

The upstream's credential is the deployment's (WARDEN_MCP_UPSTREAM_KEYS: {"<server>": {"api_key" |
"api_key_env" | "api_key_file": ...}}), never an agent's and never stored in the database.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured, ValidationError
from django.db import IntegrityError, transaction

from audit.services import audit_record

from ..models import MCP_SERVER_NAME, MCP_TOOL_NAME, Clearance, McpServer, McpTool

MAX_SCHEMA_BYTES = 16_384
MAX_TOOLS = 200
LABELS = {label: value for value, label in Clearance.choices}


def _label(value, field: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value in Clearance.values:
        return value
    if isinstance(value, str) and value in LABELS:
        return LABELS[value]
    raise ValidationError({field: f"One of {', '.join(LABELS)}."})


def _url(url: str) -> str:
    url = (url or "").strip()
    try:
        parts = urlsplit(url)
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or len(url) > 500 \
            or not url.isprintable() or parts.username or parts.password:
        raise ValidationError({"url": "The server's Streamable HTTP endpoint: an http(s) URL without a password "
                                      "(its credential belongs in WARDEN_MCP_UPSTREAM_KEYS)."})
    return url


def check_input_schema(schema) -> dict:
    """An MCP tool's inputSchema: a JSON Schema of an object, small enough to check every call against."""
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError

    if schema is None:
        schema = {"type": "object"}
    if not isinstance(schema, dict) or schema.get("type") != "object":
        raise ValidationError({"input_schema": 'A JSON Schema of an object ({"type": "object", ...}).'})
    try:
        text = json.dumps(schema, ensure_ascii=False)
        text.encode("utf-8")
    except (ValueError, TypeError, RecursionError, UnicodeEncodeError):
        raise ValidationError({"input_schema": "Plain JSON: no lone surrogates, NaN or deep nesting."}) from None
    if "\\u0000" in text or "\x00" in text:
        raise ValidationError({"input_schema": "No NUL characters."})
    if len(text.encode("utf-8")) > MAX_SCHEMA_BYTES:
        raise ValidationError({"input_schema": f"At most {MAX_SCHEMA_BYTES} bytes."})
    try:
        Draft202012Validator.check_schema(schema)
    except RecursionError:
        raise ValidationError({"input_schema": "Too deeply nested."}) from None
    except SchemaError as error:
        raise ValidationError({"input_schema": f"Not a valid JSON Schema: {error.message[:200]}"}) from None
    if "$ref" in json.dumps(schema) and any(isinstance(ref, str) and not ref.startswith("#")
                                              for ref in _refs(schema)):
        raise ValidationError({"input_schema": "Only local $ref (#/...) : Warden fetches no schemas."})
    return schema


def _refs(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


@transaction.atomic
def mcp_server_register(*, by, name: str, url: str, description: str = "", timeout_seconds: int = 30,
                        tools: list[dict] | None = None) -> McpServer:
    name = (name or "").strip()
    if not re.match(MCP_SERVER_NAME, name):
        raise ValidationError({"name": "1 to 32 lower-case letters, digits and dashes (not at either end)."})
    if not isinstance(timeout_seconds, int) or not 1 <= timeout_seconds <= 600:
        raise ValidationError({"timeout_seconds": "1 to 600 seconds."})
    try:
        with transaction.atomic():
            server = McpServer.objects.create(name=name, url=_url(url), description=(description or "")[:2000],
                                              timeout_seconds=timeout_seconds, created_by=by, updated_by=by)
    except IntegrityError:
        raise ValidationError({"name": f"An MCP server named {name} is registered already."}) from None
    audit_record(action="mcp_server.register", actor=by, resource=f"mcp_server:{name}",
                 payload={"url": server.url, "description": server.description, "timeout_seconds": timeout_seconds})
    for tool in tools or []:
        mcp_tool_set(server=server, by=by, **tool)
    return server


@transaction.atomic
def mcp_server_update(*, server: McpServer, by, url: str | None = None, description: str | None = None,
                      active: bool | None = None, timeout_seconds: int | None = None) -> McpServer:
    server = McpServer.objects.select_for_update().get(pk=server.pk)
    changes = {}
    if url is not None and _url(url) != server.url:
        changes["url"] = _url(url)
    if description is not None and description[:2000] != server.description:
        changes["description"] = description[:2000]
    if active is not None and active != server.active:
        changes["active"] = bool(active)
    if timeout_seconds is not None and timeout_seconds != server.timeout_seconds:
        if not isinstance(timeout_seconds, int) or not 1 <= timeout_seconds <= 600:
            raise ValidationError({"timeout_seconds": "1 to 600 seconds."})
        changes["timeout_seconds"] = timeout_seconds
    if changes:
        for field, value in changes.items():
            setattr(server, field, value)
        server.updated_by = by
        server.save()
        audit_record(action="mcp_server.update", actor=by, resource=f"mcp_server:{server.name}", payload=changes)
    return server


@transaction.atomic
def mcp_tool_set(*, server: McpServer, by, name: str, description: str | None = None, input_schema=None,
                 price_micros: int | None = None, clearance=None, returns=None, active: bool | None = None) -> McpTool:
    """Register a tool of a server, or change what is given of it (None: as it is; for a new tool, no
    description, any object of arguments, returns public, active).

    The price (per call, a new price from now, history kept) and the clearance are set under
    `<server>/<tool>`. An admin gives a new tool its first price; changing a price that exists is finance's
    (budget.manage), as on the prices page. A tool without a price is registered and denied by the gate
    until it has one."""
    from billing.models import PriceKind
    from billing.services import price_at, price_set
    from django.utils import timezone
    from governance.access import can
    from governance.models import DataSink

    name = (name or "").strip() if isinstance(name, str) else ""
    if not re.match(MCP_TOOL_NAME, name):
        raise ValidationError({"name": "An MCP tool name: 1 to 64 letters, digits, _ . or -."})
    resource = f"{server.name}/{name}"
    # One change of a server's tools at a time: two admins registering the same tool (or the 201st) meet here.
    McpServer.objects.select_for_update().get(pk=server.pk)
    tool = McpTool.objects.filter(server=server, name=name).first()
    created = tool is None
    if created:
        if McpTool.objects.filter(server=server).count() >= MAX_TOOLS:
            raise ValidationError({"tools": f"At most {MAX_TOOLS} tools per server."})
        tool = McpTool(server=server, name=name, description="", input_schema={"type": "object"},
                       returns=Clearance.PUBLIC, active=True)
    before = {"description": tool.description, "input_schema": tool.input_schema, "returns": tool.returns,
              "active": tool.active}
    if description is not None:
        tool.description = str(description)[:2000]
    if input_schema is not None:
        tool.input_schema = check_input_schema(input_schema)
    if returns is not None:
        tool.returns = _label(returns, "returns")
    if active is not None:
        tool.active = bool(active)
    after = {"description": tool.description, "input_schema": tool.input_schema, "returns": tool.returns,
             "active": tool.active}
    changes = {} if after == before and not created else {
        **{k: v for k, v in after.items() if created or v != before[k]},
        **({"returns": Clearance(tool.returns).label} if created or tool.returns != before["returns"] else {})}
    tool.updated_by = by
    tool.save()
    if price_micros is not None:
        current = price_at(PriceKind.TOOL, resource, timezone.now())
        if current is None or tuple(current) != (0, 0, price_micros):
            if current is not None and not can(by, "budget.manage"):
                raise ValidationError({"price_micros": f"{resource} has a price; finance changes prices (Budgets → "
                                                       "Prices)."})
            price_set(kind=PriceKind.TOOL, name=resource, by=by, per_call_micros=price_micros,
                      note=f"MCP tool of {server.name}")
            changes["price_micros"] = price_micros
    if clearance is not None:
        level = _label(clearance, "clearance")
        sink = DataSink.objects.filter(kind="tool", name=resource).first()
        if sink is None or sink.clearance != level:
            DataSink.objects.update_or_create(kind="tool", name=resource, defaults={
                "clearance": level, "note": f"MCP tool of {server.name}", "updated_by": by})
            changes["clearance"] = Clearance(level).label
    if changes:
        audit_record(action="mcp_tool.register" if created else "mcp_tool.update", actor=by,
                     resource=f"mcp_tool:{resource}", payload=changes)
    return tool


# --- reading ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ToolView:
    """A registered tool with what lives elsewhere under its name: its price now and its clearance."""

    tool: McpTool
    price_micros: int | None
    clearance: int

    @property
    def resource(self) -> str:
        return self.tool.resource

    @property
    def clearance_label(self) -> str:
        return Clearance(self.clearance).label


def tool_views(server: McpServer, tools=None) -> list[ToolView]:
    from billing.models import Price, PriceKind
    from django.utils import timezone
    tools = list(tools if tools is not None else server.tools.all())
    names = [tool.resource for tool in tools]
    prices: dict[str, int] = {}
    for name, per_call in (Price.objects.filter(kind=PriceKind.TOOL, name__in=names, effective_from__lte=timezone.now())
                           .order_by("name", "-effective_from").values_list("name", "per_call_micros")):
        prices.setdefault(name, per_call)
    from governance.flow import DEFAULT_SINK
    from governance.models import DataSink

    sinks = dict(DataSink.objects.filter(kind="tool", name__in=[*names, "*"]).values_list("name", "clearance"))
    default = sinks.get("*", DEFAULT_SINK["tool"])
    return [ToolView(tool, prices.get(tool.resource), sinks.get(tool.resource, default)) for tool in tools]


def mcp_server_get(*, name: str) -> McpServer:
    from django.http import Http404

    server = McpServer.objects.filter(name=name).first()
    if server is None:
        raise Http404(f"No MCP server named {name}.")
    return server


def mcp_server_list():
    from django.db.models import Count, Q

    return McpServer.objects.annotate(tool_count=Count("tools", filter=Q(tools__active=True))).order_by("name")


def upstream_headers(server_name: str) -> dict[str, str]:
    """The deployment's credential for this server (WARDEN_MCP_UPSTREAM_KEYS), as an Authorization header."""
    from ..runtime.providers import _key

    try:
        keys = json.loads(settings.WARDEN_MCP_UPSTREAM_KEYS or "{}")
    except ValueError:
        raise ImproperlyConfigured("WARDEN_MCP_UPSTREAM_KEYS must be a JSON object") from None
    spec = keys.get(server_name) if isinstance(keys, dict) else None
    secret = _key(spec) if isinstance(spec, dict) else ""
    return {"Authorization": f"Bearer {secret}"} if secret else {}


def discover_tools(server: McpServer) -> list[dict]:
    """What the server itself offers now (its `tools/list`, asked with the SDK's client and the deployment's
    credential): for an admin to choose what to register. Nothing here is trusted or stored as it is."""
    from asgiref.sync import async_to_sync

    try:
        return async_to_sync(_discover)(server.url, upstream_headers(server.name), server.timeout_seconds)
    except Exception as error:  # whatever the server did, the admin gets a sentence
        from .mcp_app import _find

        timeout = _find(error, TimeoutError) is not None
        raise ValidationError(f"{server.name} did not answer in time ({server.timeout_seconds} s)." if timeout else
                              f"{server.name} could not be asked for its tools at {server.url} "
                              f"({type(error).__name__}).") from None


async def _discover(url: str, headers: dict, timeout: int) -> list[dict]:
    import asyncio

    import httpx
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    async with httpx.AsyncClient(headers=headers, timeout=timeout, follow_redirects=False) as http:
        async with streamable_http_client(url, http_client=http) as (read, write, _):
            async with ClientSession(read, write) as session:
                await asyncio.wait_for(session.initialize(), timeout=timeout)
                listed = await asyncio.wait_for(session.list_tools(), timeout=timeout)
    return [{"name": tool.name[:64], "description": (tool.description or "")[:2000], "input_schema": tool.inputSchema}
            for tool in listed.tools[:MAX_TOOLS]]


def recent_calls(server: McpServer, limit: int = 20):
    """The latest tool calls judged for this server's tools (whatever the transport), newest first."""
    from governance.models import Action

    return (Action.objects.filter(action="tool.call", resource__startswith=f"{server.name}/")
            .select_related("agent").order_by("-created_at")[:limit])
