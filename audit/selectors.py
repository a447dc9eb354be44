from __future__ import annotations

from django.db.models import QuerySet

from governance.access import can

from .models import AuditEvent


def events(*, user) -> QuerySet[AuditEvent]:
    """The audit log for those who may read it (security), nothing for anyone else."""
    if not can(user, "audit.view"):
        return AuditEvent.objects.none()
    return AuditEvent.objects.all()


def events_for_agent(*, user, agent_id, limit: int = 20):
    """The newest events about one agent, for those who may read the audit log: its own chain,
    read backwards on the (chain, seq) index."""
    return events(user=user).filter(chain=f"agent:{agent_id}").order_by("-seq")[:limit]


def trace(*, user, correlation_id: str) -> list[dict]:
    """Every event of one correlation id as a tree: who started it, then each delegation hop."""
    rows = list(events(user=user).filter(correlation_id=correlation_id).order_by("occurred_at", "id"))
    nodes: dict[tuple, dict] = {}
    roots: list[dict] = []
    for event in rows:
        path = [(hop.get("type"), hop.get("name")) for hop in event.delegation_chain] or [(event.actor_type, event.actor_name)]
        if event.agent_name and (("agent", event.agent_name) not in path):
            path.append(("agent", event.agent_name))
        parent = None
        for depth in range(len(path)):
            key = tuple(path[: depth + 1])
            node = nodes.get(key)
            if node is None:
                node = {"type": path[depth][0], "name": path[depth][1], "events": [], "children": []}
                nodes[key] = node
                (parent["children"] if parent else roots).append(node)
            parent = node
        parent["events"].append(event)
    return roots
