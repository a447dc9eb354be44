"""Simulate a draft policy set against recorded decisions before publishing it."""

from __future__ import annotations

from dataclasses import dataclass

from django.core.exceptions import ValidationError

from .models import Action
from .policy_engine import CompiledPolicySet, PolicyRow, Request, check_policy
from .selectors import active_policy_set


@dataclass
class Change:
    action_id: str
    agent: str
    action: str
    resource: str
    created_at: str
    current: str
    draft: str
    current_policies: list[str]
    draft_policies: list[str]
    draft_reasons: list[str]


def draft_rows(changes: list[dict]) -> list[PolicyRow]:
    """The active set with the changes applied; ValidationError if a draft body is invalid."""
    rows = {row.name: row for row in active_policy_set().rows}
    errors = {}
    for change in changes:
        name = change["name"]
        if change.get("enabled", True) is False:
            rows.pop(name, None)
            continue
        body = change.get("body")
        if body is None:
            if name not in rows:
                errors[name] = ["Give the body of a new policy."]
            continue
        _, problems = check_policy(body)
        if problems:
            errors[name] = [str(problem) for problem in problems]
            continue
        rows[name] = PolicyRow(name, 0, body)
    if errors:
        raise ValidationError({"changes": [f"{name}: {'; '.join(messages)}" for name, messages in errors.items()]})
    return [rows[name] for name in sorted(rows)]


def simulate(*, changes: list[dict], limit: int = 500) -> dict:
    current = active_policy_set()
    draft = CompiledPolicySet(-1, draft_rows(changes), slice_cache_size=256)
    recorded = (
        Action.objects.exclude(cedar_entities=[])
        .select_related("agent")
        .order_by("-created_at")[:limit]
    )
    changed: list[Change] = []
    counted = 0
    for record in recorded:
        principal, resource = record.cedar_entities
        request = Request(action=record.action, agent=principal, resource=resource, context=record.cedar_context)
        before, after = current.decide(request), draft.decide(request)
        counted += 1
        if before.outcome != after.outcome:
            changed.append(Change(
                action_id=str(record.pk), agent=record.agent.name, action=record.action, resource=record.resource,
                created_at=record.created_at.isoformat(), current=before.outcome, draft=after.outcome,
                current_policies=before.policies, draft_policies=after.policies, draft_reasons=after.reasons,
            ))
    return {
        "policy_set_version": current.version,
        "draft_policies": len(draft),
        "decisions_replayed": counted,
        "changed": [vars(change) for change in changed],
    }
