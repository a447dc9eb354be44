"""Information flow: data may go only where it is cleared to go.

Every request that sends something out (a model call, a tool, an HTTP call, a delegation) carries a
*label*: the highest classification of the data the caller has seen, with where it came from. The
receiver has a *clearance* (a data sink's, or the delegate agent's). The gate denies a label above the
clearance, naming the source ("derived from customers (confidential) at step 3 of run ..."), unless a
policy escalates the request to a person (Cedar sees `context.data_classification` and
`context.sink_clearance`).

Where the label comes from is never the caller's word:

- Warden's runtime passes the run's label (agents/runtime: it rises with every step that returns data,
  and a child run starts with its parent's);
- an agent over the REST API or the gateway carries what it read through Warden (allowed `data.read`
  actions) and what the tools it called answered (tools registered as returning sensitive data,
  agents.McpTool.returns) within WARDEN_FLOW_WINDOW_HOURS; a `context.data_classification` it declares
  may raise that, never lower it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from django.conf import settings

from agents.models import Agent, Clearance

OUTBOUND = ("llm.call", "tool.call", "tool.http", "external.call", "agent.delegate")
SINK_KIND = {"llm.call": "model", "tool.call": "tool", "tool.http": "endpoint", "external.call": "endpoint"}
# Without a data sink of their own or a "*" of their kind: models and tools see internal data, the outside
# world public data only.
DEFAULT_SINK = {"model": Clearance.INTERNAL, "tool": Clearance.INTERNAL, "endpoint": Clearance.PUBLIC}
RUNTIME_KEY_PREFIX = "run:"
GATEWAY_KEY_PREFIX = "gw:"  # the gateway's Actions (agents/gateway): settled by Warden from the upstream's answer
RESERVED_KEY_PREFIXES = (RUNTIME_KEY_PREFIX, GATEWAY_KEY_PREFIX)


@dataclass(frozen=True)
class Flow:
    classification: int = Clearance.PUBLIC
    sources: tuple = ()  # ({"view", "classification", "step"?, "run"?, "action"?}, ...), most sensitive first

    def describe(self) -> str:
        if not self.sources:
            return f"carries {Clearance(self.classification).label} data"
        parts = []
        for source in self.sources[:3]:
            where = ""
            if source.get("step") is not None:
                where = f" at step {source['step']}"
                if source.get("run"):
                    where += f" of run {str(source['run'])[:8]}"
            elif source.get("action"):
                where = f" (read over the API, action {str(source['action'])[:8]})"
            parts.append(f"{source['view']} ({source['classification']}){where}")
        return "derived from " + ", ".join(parts)

    def as_dict(self) -> dict:
        return {"classification": Clearance(self.classification).label, "sources": list(self.sources)}


def merge(*flows: Flow) -> Flow:
    """The label of something derived from all of these: the highest, with every source, most sensitive first."""
    sources, seen = [], set()
    for flow in flows:
        for source in flow.sources:
            key = (source.get("view"), source.get("run"), source.get("step"), source.get("action"))
            if key not in seen:
                seen.add(key)
                sources.append(dict(source))
    sources.sort(key=lambda s: -Clearance.labels.index(s["classification"]))
    return Flow(max([Clearance.PUBLIC, *(flow.classification for flow in flows)]), tuple(sources[:20]))


def sink_name(*, action: str, resource: str, host: str | None = None) -> tuple[str, str]:
    """(kind, name) of the data sink that receives this (not a delegation's) request."""
    kind = SINK_KIND[action]
    return kind, (host if kind == "endpoint" and host else resource)


def sink_clearance(*, action: str, resource: str, host: str | None = None, found: dict | None = None) -> tuple[int, str]:
    """How sensitive data the receiver of this request may get, and what to call it in a reason.

    `found`: the sinks of that name and "*" of its kind ({name: clearance}), when the caller read them."""
    from .models import DataSink

    if action == "agent.delegate":
        clearance = Agent.objects.filter(name=resource).values_list("clearance", flat=True).first()
        return (Clearance.PUBLIC if clearance is None else clearance), f"agent {resource}"
    kind, name = sink_name(action=action, resource=resource, host=host)
    if found is None:
        found = dict(DataSink.objects.filter(kind=kind, name__in=[name, "*"]).values_list("name", "clearance"))
    clearance = found.get(name, found.get("*", DEFAULT_SINK[kind]))
    return clearance, f"{kind} {name}"


def api_flow(*, agent_id, now: dt.datetime, declared: int | None) -> Flow:
    """What an agent acting over the REST API is taken to hold: the data it was allowed to read through Warden
    lately (not by Warden's runtime, whose runs carry their own labels), or more if it says so."""
    from .models import Action, ActionOutcome

    from django.db.models import IntegerField
    from django.db.models.fields.json import KeyTextTransform
    from django.db.models.functions import Cast, Coalesce

    # The most sensitive reads of the window, whatever came after them (many harmless reads wash nothing out);
    # a read counts from when it was served (completed), not from when it was asked (it may have waited for a
    # person).
    since, asked_since = windows(now)
    reads = (Action.objects.filter(agent_id=agent_id, action="data.read", outcome=ActionOutcome.ALLOWED,
                                   created_at__gte=asked_since)
             .annotate(at=Coalesce("completed_at", "allowed_at", "created_at"),
                       level=Cast(KeyTextTransform("data_classification", "cedar_context"), IntegerField()))
             .filter(at__gte=since)
             .exclude(idempotency_key__startswith=RUNTIME_KEY_PREFIX)
             .order_by("-level", "-at", "-pk").values_list("pk", "resource", "level")[:5])
    return flow_of(reads=list(reads), tools=_tool_answers(agent_id=agent_id, since=since, asked_since=asked_since),
                   declared=declared)


def windows(now: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    """(served since, asked since): a read counts from when it was served, within the window; it was asked at
    most an approval's longest wait before that (the index's range)."""
    from .policy_engine import MAX_EXPIRY

    since = now - dt.timedelta(hours=settings.WARDEN_FLOW_WINDOW_HOURS)
    return since, since - dt.timedelta(seconds=max(MAX_EXPIRY, settings.WARDEN_APPROVAL_TTL_HOURS * 3600))


def flow_of(*, reads, tools, declared: int | None) -> Flow:
    """The label from what the agent read, (action id, view, level) most sensitive first, and what tools
    answered it, (action id, tool, level): pure, so the gate's hot path (governance/hotpath.py) builds it from
    its one read as the slow path does from its queries."""
    flows = [Flow(level or 0, ({"view": resource, "classification": Clearance(level or 0).label,
                                "action": str(pk)},))
             for pk, resource, level in reads]
    flows += [Flow(level, ({"view": f"tool {resource}", "classification": Clearance(level).label,
                            "action": str(pk)},))
              for pk, resource, level in tools]
    if declared is not None:
        flows.append(Flow(declared, ({"view": "data the agent declares", "classification":
                                      Clearance(declared).label},)))
    return merge(*flows)


def _tool_answers(*, agent_id, since: dt.datetime, asked_since: dt.datetime) -> list[tuple]:
    """Calls of tools registered as returning sensitive data (agents.McpTool.returns), allowed within the window
    (failed ones too: a tool's error answer reaches the agent as well): what they answered is data the agent
    now holds, as after a read. The registry as it is now decides the level (a change is audited).
    (action id, tool, level) of the latest call of each such tool, by tool name."""
    from agents.models import McpTool
    from django.db.models.functions import Coalesce

    from .models import Action, ActionOutcome, ActionStatus

    returning = {f"{server}/{name}": level for server, name, level in
                 McpTool.objects.filter(returns__gt=Clearance.PUBLIC).values_list("server__name", "name", "returns")}
    if not returning:
        return []
    calls = (Action.objects.filter(agent_id=agent_id, action="tool.call", outcome=ActionOutcome.ALLOWED,
                                   resource__in=list(returning), created_at__gte=asked_since)
             .exclude(status__in=[ActionStatus.CANCELLED, ActionStatus.EXPIRED])
             .annotate(at=Coalesce("completed_at", "allowed_at", "created_at")).filter(at__gte=since)
             .order_by("resource", "-at", "-pk").distinct("resource").values_list("pk", "resource"))
    # The latest call of each such tool (however many calls of others came after): a failed call counts too,
    # since a tool's error answer reached the agent as well.
    return [(pk, resource, returning[resource]) for pk, resource in calls]


def api_flow_of_chain(*, agent_id, chain, now: dt.datetime, declared: int | None) -> Flow:
    """What an agent over the API carries, acting for others: its own reads and every agent's in its chain."""
    agents = [agent_id, *(hop["id"] for hop in chain or [] if hop.get("type") == "agent")]
    return merge(*(api_flow(agent_id=each, now=now, declared=declared) for each in agents))
