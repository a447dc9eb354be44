from __future__ import annotations

from .models import AuditEvent


def events_for_agent(*, agent_id, limit: int = 20):
    return AuditEvent.objects.filter(agent_id=agent_id).order_by("-occurred_at", "-id")[:limit]
