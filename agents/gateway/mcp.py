"""The MCP gateway's thread side: which tools an agent is shown, what the gate says of a call, what it cost.

An agent's MCP client points at `<warden>/mcp/<server>/` with its Warden key as a Bearer token instead of at
the server itself. Only tools registered for that server (agents/gateway/registry.py) exist there:
`tools/list` shows those the agent could be allowed (governance.gate.could_allow), `tools/call` is a
`tool.call` on `<server>/<tool>` through the gate, forwarded once allowed, and completed with its outcome.
The arguments are the agent's: they must match the registered input schema, and their digest is part of
the judged request (an approval covers those arguments and no others).
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from dataclasses import dataclass, field

from governance.flow import GATEWAY_KEY_PREFIX
from governance.gate import could_allow
from governance.models import Action, ActionOutcome, ActionStatus

from ..models import MCP_SERVER_NAME, MCP_TOOL_NAME, McpServer, McpTool
from .registry import upstream_headers
from .services import Caller, GatewayError, ask, claim_action, verdict

MCP_KEY_PREFIX = f"{GATEWAY_KEY_PREFIX}mcp:"
SHOWN_CHARS = 4000


@dataclass
class McpCall:
    action: Action
    server: str
    tool: str
    url: str
    timeout: int
    arguments: dict
    headers: dict = field(default_factory=dict)  # the deployment's credential for the server
    claimed: bool = False

    @property
    def resource(self) -> str:
        return f"{self.server}/{self.tool}"


def server_active(name: str) -> McpServer:
    server = McpServer.objects.filter(name=name, active=True).first() if re.match(MCP_SERVER_NAME, name) else None
    if server is None:
        raise GatewayError(404, "not_found", f"No MCP server named {name} is registered with Warden (or it is retired).")
    return server


def tools_for(caller: Caller, server_name: str) -> list[dict]:
    """`tools/list`: the server's registered, active tools that this agent could be allowed now."""
    server = server_active(server_name)
    tools = list(server.tools.filter(active=True).select_related("server"))
    shown = could_allow(agent=caller.agent, key=caller.key, action="tool.call", resources=[t.resource for t in tools])
    return [{"name": tool.name, "description": tool.description, "inputSchema": tool.input_schema}
            for tool in tools if tool.resource in shown]


def _digest(arguments: dict) -> tuple[str, str]:
    """The arguments' canonical text and its sha256."""
    try:
        text = json.dumps(arguments, sort_keys=True, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest(), text
    except (ValueError, TypeError, UnicodeEncodeError, RecursionError):
        raise GatewayError(400, "invalid_arguments", "The arguments hold values that cannot be sent on (NaN, a lone "
                                                     "surrogate).") from None


def _check_arguments(tool: McpTool, arguments) -> dict:
    from jsonschema import Draft202012Validator

    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        raise GatewayError(400, "invalid_arguments", "The arguments must be an object.")
    try:
        error = next(Draft202012Validator(tool.input_schema).iter_errors(arguments), None)
    except RecursionError:
        error = "too deeply nested"
    if error is not None:
        message = error if isinstance(error, str) else error.message
        where = "" if isinstance(error, str) or not error.absolute_path else \
            " at " + "/".join(str(part) for part in error.absolute_path)
        raise GatewayError(400, "invalid_arguments", f"The arguments do not match {tool.resource}'s input schema"
                                                     f"{where}: {message[:300]}")
    return arguments


def _approved_waiting(agent_id, resource: str, digest: str) -> str | None:
    """The key of this agent's earlier call of the same tool with the same arguments that a person was asked
    about and that has not gone upstream: calling again (after the approval) is that call, not a new one."""
    return (Action.objects.filter(agent_id=agent_id, action="tool.call", resource=resource,
                                  idempotency_key__startswith=MCP_KEY_PREFIX, status=ActionStatus.DECIDED,
                                  outcome__in=[ActionOutcome.PENDING_APPROVAL, ActionOutcome.ALLOWED],
                                  approval__isnull=False, context__gateway__request_sha256=digest)
            .exclude(pk__in=_claimed()).order_by("-created_at").values_list("idempotency_key", flat=True).first())


def _claimed():
    from ..models import GatewayCall

    return GatewayCall.objects.values("action_id")


def admit_call(caller: Caller, server_name: str, tool_name: str, arguments) -> McpCall:
    """Check the call, ask the gate; when allowed, claim it for forwarding (once)."""
    server = server_active(server_name)
    tool = None
    if isinstance(tool_name, str) and re.match(MCP_TOOL_NAME, tool_name):
        tool = McpTool.objects.filter(server=server, name=tool_name, active=True).select_related("server").first()
    if tool is None:
        raise GatewayError(404, "unknown_tool", f"{server_name} has no tool {str(tool_name)[:64]} registered with "
                                                "Warden.")
    arguments = _check_arguments(tool, arguments)
    digest, _ = _digest(arguments)
    # What a person approving it reads: the arguments, every character visible (ASCII escapes: no right-to-left
    # overrides or zero-width characters to make it read otherwise), said to be cut when they are.
    shown = json.dumps(arguments, sort_keys=True, ensure_ascii=True)
    if len(shown) > SHOWN_CHARS:
        shown = f"{shown[:SHOWN_CHARS]} … ({len(shown) - SHOWN_CHARS:,} more characters not shown)"
    context = {"purpose": f"gateway: MCP tool of {server_name}",
               "gateway": {"mcp": server_name, "request_sha256": digest, "arguments": shown}}
    key = _approved_waiting(caller.agent.pk, tool.resource, digest) or f"{MCP_KEY_PREFIX}{uuid.uuid4()}"
    action = ask(caller, tool.resource, context, key, action="tool.call")
    call = McpCall(action=action, server=server_name, tool=tool.name, url=server.url, timeout=server.timeout_seconds,
                   arguments=arguments, headers=upstream_headers(server_name))
    if verdict(action) is None:
        claim_action(action, tool.resource)
        call.claimed = True
    return call


def claim(call: McpCall) -> None:
    claim_action(call.action, call.resource)
