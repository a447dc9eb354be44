"""Tools a program may call through `ctx.tool(name, **args)`, each behind the gate.

Built in: `http.get` (gate action `tool.http` on the URL; only hosts in
WARDEN_HTTP_TOOL_HOSTS; redirects are not followed, they come back for the
program to ask for) and `email.send` (gate action `tool.call` on `email.send`,
through Django's e-mail backend, to Warden's users or allowed domains).
A deployment adds its own in WARDEN_TOOLS: dotted paths to `Tool` objects
(name, description, argument schema, suggested price per call, function).

Arguments are checked against the tool's JSON schema before anything is
asked of the gate; `execute()` refuses to run a tool without an allowed,
open Action for exactly this call.
"""

from __future__ import annotations

import email.utils
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import jsonschema
from django.conf import settings
from django.contrib.auth import get_user_model

from billing.services import endpoint_host

from .errors import Refused
from .providers import require_allowed


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    schema: dict  # JSON schema of the arguments (an object)
    run: Callable[[dict], dict]  # arguments -> a JSON-able result
    action: str = "tool.call"  # the gate action: tool.call (resource: the tool's name) or tool.http (the URL)
    price_micros: int = 0  # suggested price per call; Warden charges what its price table says
    simulated: bool = False  # answers made up offline (demo tools): labelled so on the run page
    resource: Callable[[dict], str] | None = field(default=None, repr=False)

    def resource_for(self, args: dict) -> str:
        return self.resource(args) if self.resource is not None else self.name


# --- http.get -------------------------------------------------------------------------------------


def _http_resource(args: dict) -> str:
    return args["url"]


def _check_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Refused(f"http.get takes an http or https URL, not {url[:100]!r}")
    host = endpoint_host(url)
    if not host or host not in settings.WARDEN_HTTP_TOOL_HOSTS:
        raise Refused(f"host {host or parts.hostname} is not on http.get's allow-list (WARDEN_HTTP_TOOL_HOSTS: "
                      f"{', '.join(settings.WARDEN_HTTP_TOOL_HOSTS) or 'empty'})")
    return host


def http_get(args: dict) -> dict:
    import httpx

    url = args["url"]
    _check_url(url)
    limit = settings.WARDEN_HTTP_TOOL_MAX_BYTES
    body = bytearray()
    truncated = False
    try:
        headers = {k: v for k, v in args.get("headers", {}).items() if k.lower() not in ("host", "content-length")}
        with httpx.stream("GET", url, headers={"User-Agent": "Warden-runtime/1", **headers},
                          timeout=settings.WARDEN_HTTP_TOOL_TIMEOUT, follow_redirects=False) as response:
            for chunk in response.iter_bytes():
                body.extend(chunk)
                if len(body) > limit:
                    truncated = True
                    del body[limit:]
                    break
            status, headers = response.status_code, response.headers
            encoding = response.encoding or "utf-8"
    except httpx.HTTPError as error:
        raise ToolError(f"{type(error).__name__}: {error}") from None
    result = {"url": url, "status": status, "content_type": headers.get("content-type", ""),
              "text": body.decode(encoding, errors="replace"), "truncated": truncated}
    if 300 <= status < 400 and headers.get("location"):
        result["location"] = headers["location"]  # not followed: another URL is another request to the gate
    return result


HTTP_GET = Tool(
    name="http.get", action="tool.http", resource=_http_resource,
    description="GET a URL on an allow-listed host; the body comes back as text (cut at the size limit).",
    schema={"type": "object", "required": ["url"], "additionalProperties": False,
            "properties": {"url": {"type": "string", "maxLength": 255},
                           "headers": {"type": "object", "maxProperties": 10,
                                       "additionalProperties": {"type": "string", "maxLength": 500}}}},
    run=http_get,
)


# --- email.send -----------------------------------------------------------------------------------


def _recipients(to) -> list[str]:
    addresses = [to] if isinstance(to, str) else list(to)
    known = {value.lower() for value in get_user_model().objects.filter(is_active=True).exclude(email="")
             .values_list("email", flat=True)}
    out = []
    for address in addresses:
        _, parsed = email.utils.parseaddr(address)
        if not parsed or "@" not in parsed or parsed != address.strip():
            raise Refused(f"{address!r} is not an e-mail address")
        domain = parsed.rsplit("@", 1)[1].lower()
        if parsed.lower() not in known and domain not in settings.WARDEN_EMAIL_TOOL_DOMAINS:
            raise Refused(f"{parsed} is neither a Warden user's address nor in an allowed domain "
                          f"(WARDEN_EMAIL_TOOL_DOMAINS: {', '.join(settings.WARDEN_EMAIL_TOOL_DOMAINS) or 'none'})")
        out.append(parsed)
    return out


def email_send(args: dict) -> dict:
    from django.core.mail import EmailMessage

    recipients = _recipients(args["to"])
    message = EmailMessage(subject=args["subject"], body=args["body"], from_email=settings.DEFAULT_FROM_EMAIL,
                           to=recipients, headers={"X-Warden-Sent-By": "agent runtime"})
    try:
        sent = message.send()
    except Exception as error:  # SMTP refused, connection failed: the step failed, the program decides
        raise ToolError(f"{type(error).__name__}: {error}") from None
    return {"sent": sent, "to": recipients}


EMAIL_SEND = Tool(
    name="email.send",
    description="Send a plain-text e-mail to Warden users (or allowed domains).",
    schema={"type": "object", "required": ["to", "subject", "body"], "additionalProperties": False,
            "properties": {"to": {"oneOf": [{"type": "string", "maxLength": 254},
                                            {"type": "array", "minItems": 1, "maxItems": 10,
                                             "items": {"type": "string", "maxLength": 254}}]},
                           "subject": {"type": "string", "minLength": 1, "maxLength": 200, "pattern": "^[^\\r\\n]*$"},
                           "body": {"type": "string", "maxLength": 20000}}},
    run=email_send, price_micros=100,
)


class ToolError(Exception):
    """The tool ran and failed (a network error, an SMTP refusal): the step failed."""


# --- the registry ---------------------------------------------------------------------------------

BUILT_IN = (HTTP_GET, EMAIL_SEND)


def registry() -> dict[str, Tool]:
    tools = {tool.name: tool for tool in BUILT_IN}
    for path in settings.WARDEN_TOOLS:
        module_name, _, attribute = path.rpartition(".")
        found = getattr(importlib.import_module(module_name), attribute)
        for tool in found if isinstance(found, (list, tuple)) else [found]:
            if not isinstance(tool, Tool):
                raise TypeError(f"{path} must name a Tool or a list of them")
            tools[tool.name] = tool
    return tools


def tool_get(name: str) -> Tool:
    tool = registry().get(name)
    if tool is None:
        raise Refused(f"no tool named {name!r}; known: {', '.join(sorted(registry()))}")
    return tool


def check_args(tool: Tool, args: dict) -> None:
    try:
        jsonschema.validate(args, tool.schema)
    except jsonschema.ValidationError as error:
        where = "/".join(str(part) for part in error.absolute_path) or "arguments"
        raise Refused(f"{tool.name}: {where}: {error.message}") from None
    if tool.name == HTTP_GET.name:
        _check_url(args["url"])
    if tool.name == EMAIL_SEND.name:
        _recipients(args["to"])


def execute(*, tool: Tool, args: dict, action_id, agent_id) -> dict:
    """Run the tool for an allowed action; its result (or ToolError)."""
    from governance.telemetry import tracer

    require_allowed(action_id, action=tool.action, resource=tool.resource_for(args), agent_id=agent_id)
    with tracer.start_as_current_span("tool.call") as span:
        span.set_attribute("warden.tool", tool.name)
        span.set_attribute("warden.action_id", str(action_id))
        return tool.run(args)
