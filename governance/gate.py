"""The gate: the only function that turns an agent's wish into permission.

    request_action(agent=..., action=..., resource=..., context=...) -> Action

In one database transaction: identity, scopes, Cedar policies, budget
reservation, audit event. Outcomes: allowed, denied, pending_approval. Every
judgement, a denial included, is recorded as an Action and an audit event.
Anything unexpected denies (fail closed); if the database itself fails, the
transaction fails and nothing is allowed.

`complete_action(...)` records what happened after an allowed action ran.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import logging
import uuid
import zoneinfo
from dataclasses import dataclass
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from agents.models import Agent, AgentStatus, Clearance, Delegation
from agents.services import delegation_problem, describe_chain
from audit.services import Actor, audit_record
from billing import services as billing

from . import sql
from .context import current_correlation_id
from .exceptions import Conflict
from .models import Action, ActionOutcome, ActionStatus, Approval, RoleGrant
from .policy_engine import ACTION_RESOURCE, Request
from .selectors import policy_set_for
from .telemetry import tracer

logger = logging.getLogger(__name__)

ACTION_JSON_FIELDS = {"context", "cedar_context", "cedar_entities", "reasons", "policy_ids", "observed",
                      "delegation_chain", "usage"}
CLASSIFICATIONS = {label: value for value, label in Clearance.choices}
MAX_TOKENS = 10_000_000
MAX_COST_MICROS = 10**12  # one million dollars: anything above is a mistake


@dataclass(frozen=True)
class Judgement:
    outcome: str
    reasons: list[str]
    policies: list[str]
    escalate_to: list[str]
    observed: dict | None = None


def _int(context: dict, name: str, *, required: bool, maximum: int) -> int:
    value = context.get(name)
    if value is None:
        if required:
            raise ValidationError({f"context.{name}": "This field is required for this action."})
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError({f"context.{name}": "Must be a whole number (no floats, no strings)."})
    if not 0 <= value <= maximum:
        raise ValidationError({f"context.{name}": f"Must be between 0 and {maximum}."})
    return value


def clean_request(*, action: str, resource: str, context: dict) -> dict:
    """Check what the caller asked for; raise ValidationError (400) when it cannot be judged."""
    if action not in ACTION_RESOURCE:
        raise ValidationError({"action": f"Unknown action {action!r}; one of {', '.join(ACTION_RESOURCE)}."})
    if not isinstance(resource, str) or not resource.strip() or len(resource) > 255:
        raise ValidationError({"resource": "A non-empty name of at most 255 characters."})
    if not isinstance(context, dict):
        raise ValidationError({"context": "Must be an object."})
    cleaned = {
        "estimated_cost_micros": _int(context, "estimated_cost_micros", required=False, maximum=MAX_COST_MICROS),
    }
    if action == "llm.call":
        cleaned["input_tokens"] = _int(context, "input_tokens", required=True, maximum=MAX_TOKENS)
        cleaned["max_output_tokens"] = _int(context, "max_output_tokens", required=True, maximum=MAX_TOKENS)
    if action == "data.read" or "classification" in context:
        classification = context.get("classification")
        if classification not in CLASSIFICATIONS:
            raise ValidationError({"context.classification": f"One of {', '.join(CLASSIFICATIONS)} (required for data.read)."})
        cleaned["classification"] = classification
    if action in ("tool.http", "external.call"):
        host = (urlsplit(resource).hostname if "://" in resource else resource.split("/")[0].split(":")[0]) or ""
        if not host:
            raise ValidationError({"resource": "Give a URL or a host name."})
        cleaned["host"] = host.lower()
    if action == "agent.delegate":
        scopes = context.get("scopes")
        if not isinstance(scopes, list) or not scopes or not all(isinstance(s, str) for s in scopes):
            raise ValidationError({"context.scopes": "The scopes to delegate: a non-empty list of scope names."})
        cleaned["scopes"] = sorted(set(scopes))
    return cleaned


def request_digest(*, action: str, resource: str, context: dict, on_behalf_of) -> str:
    body = {"action": action, "resource": resource, "context": context, "on_behalf_of": str(on_behalf_of or "")}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def agent_entity(*, name: str, owner: str, team: str, clearance: int, models, tools, role_names) -> dict:
    return {
        "uid": {"type": "Agent", "id": name},
        "attrs": {
            "name": name,
            "owner": {"__entity": {"type": "User", "id": owner}},
            "team": {"__entity": {"type": "Team", "id": team}},
            "clearance": int(clearance),
            "models": list(models),
            "tools": list(tools),
        },
        "parents": [{"type": "Team", "id": team}] + [{"type": "Role", "id": role} for role in sorted(role_names)],
    }


def _resource_entity(action: str, resource: str, cleaned: dict) -> dict:
    kind = ACTION_RESOURCE[action]
    if kind == "Agent":
        target = Agent.objects.select_related("owner", "team").filter(name=resource).first()
        if target is None:
            raise ValidationError({"resource": f"No agent named {resource!r}."})
        now = timezone.now()
        roles = [
            grant.role.name
            for grant in RoleGrant.objects.filter(agent=target, revoked_at__isnull=True).select_related("role")
            if grant.expires_at is None or grant.expires_at > now
        ]
        return agent_entity(name=target.name, owner=target.owner.get_username(), team=target.team.name,
                            clearance=target.clearance, models=target.allowed_models, tools=target.allowed_tools,
                            role_names=roles)
    attrs: dict = {}
    if kind == "DataView":
        attrs["classification"] = CLASSIFICATIONS[cleaned["classification"]]
    if kind == "Endpoint":
        attrs["host"] = cleaned["host"]
    entity_id = cleaned["host"] if kind == "Endpoint" else resource
    return {"uid": {"type": kind, "id": entity_id}, "attrs": attrs, "parents": []}


@dataclass
class Snapshot:
    """What the gate needs to know about an agent, read in one round trip."""

    name: str
    status: str
    status_reason: str
    clearance: int
    allowed_models: list
    allowed_tools: list
    last_seen_at: dt.datetime | None
    owner: str
    team: str
    grants: list  # [[role, scopes, expires_at iso | None], ...]
    policy_set: tuple[int, str]  # (number, published) of the newest policy set
    budgets: int  # active budgets covering the agent


SNAPSHOT_SQL = """
SELECT a.name, a.status, a.status_reason, a.clearance, a.allowed_models, a.allowed_tools, a.last_seen_at,
       u.{username}, t.name,
       COALESCE((SELECT json_agg(json_build_array(r.name, r.scopes, g.expires_at))
                 FROM governance_rolegrant g JOIN governance_role r ON r.id = g.role_id
                 WHERE g.agent_id = a.id AND g.revoked_at IS NULL), '[]'::json),
       (SELECT json_build_array(number, created_at) FROM governance_policysetversion ORDER BY number DESC LIMIT 1),
       (SELECT count(*) FROM billing_budget b WHERE b.active AND {covering})
FROM agents_agent a JOIN {users} u ON u.id = a.owner_id JOIN agents_team t ON t.id = a.team_id
WHERE a.id = %s
"""


@functools.lru_cache(maxsize=1)
def _snapshot_sql() -> str:
    from django.contrib.auth import get_user_model

    User = get_user_model()
    return SNAPSHOT_SQL.format(username=User._meta.get_field(User.USERNAME_FIELD).column, users=User._meta.db_table,
                               covering=billing.covering("a.team_id", "a.id"))


def _snapshot(agent_id) -> Snapshot:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(_snapshot_sql(), [agent_id])
        row = cursor.fetchone()
    if row is None:
        raise Agent.DoesNotExist
    *fields, grants, policy_set, budgets = row
    policy_set = (int(policy_set[0]), dt.datetime.fromisoformat(policy_set[1]).isoformat()) if policy_set else (0, "")
    return Snapshot(*fields, grants=grants, policy_set=policy_set, budgets=budgets)


def _local_now() -> dt.datetime:
    return timezone.now().astimezone(zoneinfo.ZoneInfo(settings.WARDEN_TIMEZONE))


def _live_roles(grants, now: dt.datetime) -> tuple[set[str], set[str], list[str]]:
    """(role names, scopes, expired role names) from the snapshot's grants."""
    names, scopes, expired = set(), set(), []
    for role, role_scopes, expires_at in grants:
        if expires_at is not None and dt.datetime.fromisoformat(expires_at) <= now:
            expired.append(role)
            continue
        names.add(role)
        scopes.update(role_scopes)
    return names, scopes, expired


def _deny(reason: str) -> Judgement:
    return Judgement(ActionOutcome.DENIED, [reason], [], [])


def request_action(
    *,
    agent: Agent,
    action: str,
    resource: str,
    context: dict | None = None,
    key=None,
    on_behalf_of=None,
    idempotency_key: str | None = None,
) -> Action:
    """Judge one action. Raises ValidationError (cannot be judged) or Conflict (idempotency)."""
    context = context if context is not None else {}
    cleaned = clean_request(action=action, resource=resource, context=context)
    digest = request_digest(action=action, resource=resource, context=context, on_behalf_of=on_behalf_of)
    with tracer.start_as_current_span("gate.request_action") as span:
        span.set_attribute("warden.action", action)
        if idempotency_key:
            existing = Action.objects.filter(agent_id=agent.pk, idempotency_key=idempotency_key).first()
            if existing is not None:
                return _replay(existing, digest)
        try:
            return _judge(agent=agent, action=action, resource=resource, context=context, cleaned=cleaned, key=key,
                          on_behalf_of=on_behalf_of, idempotency_key=idempotency_key, digest=digest)
        except IntegrityError:
            # A concurrent request with the same idempotency key won the race.
            if not idempotency_key:
                raise
            existing = Action.objects.get(agent_id=agent.pk, idempotency_key=idempotency_key)
            return _replay(existing, digest)


def _replay(existing: Action, digest: str) -> Action:
    if existing.request_digest != digest:
        raise Conflict("This idempotency key was used for a different request.", code="idempotency_mismatch")
    return existing


@transaction.atomic
def _judge(*, agent, action, resource, context, cleaned, key, on_behalf_of, idempotency_key, digest) -> Action:
    now = timezone.now()
    action_id = uuid.uuid4()
    # 1. Identity: the newest committed state, read inside this transaction.
    me = _snapshot(agent.pk)
    target = _resource_entity(action, resource, cleaned)  # an unknown resource cannot be judged
    delegation = None
    chain: list[dict] = []
    judgement: Judgement | None = None
    if key is not None and (key.revoked_at is not None or (key.expires_at and key.expires_at <= now) or key.agent_id != agent.pk):
        judgement = _deny("the agent key is revoked, expired or not this agent's")
    elif me.status != AgentStatus.ACTIVE:
        reason = f"agent {me.name} is {me.status}"
        judgement = _deny(reason + (f": {me.status_reason}" if me.status_reason else ""))
    if on_behalf_of is not None:
        delegation = Delegation.objects.select_related("delegate", "delegator_user", "delegator_agent").filter(
            pk=on_behalf_of
        ).first()
        if delegation is None or delegation.delegate_id != agent.pk:
            raise ValidationError({"on_behalf_of": "No such delegation to this agent."})
        chain = describe_chain(delegation)
        if judgement is None:
            problem = delegation_problem(delegation, at=now)
            if problem:
                judgement = _deny(f"delegation chain is not valid: {problem}")

    # 2. Scopes (and the agent's capability lists).
    role_names, scopes, expired = _live_roles(me.grants, now)
    if judgement is None:
        held = set(delegation.scopes) if delegation is not None else scopes
        if action not in held:
            if delegation is not None:
                judgement = _deny(f"scope {action} is not in the delegation (it holds {', '.join(sorted(held))})")
            elif expired and not scopes & {action}:
                judgement = _deny(f"scope {action} is not granted; role grant(s) expired: {', '.join(sorted(expired))}")
            else:
                judgement = _deny(f"scope {action} is not granted by the agent's roles ({', '.join(sorted(role_names)) or 'none'})")
        elif action == "llm.call" and resource not in me.allowed_models:
            judgement = _deny(f"model {resource} is not in {me.name}'s allowed models")
        elif action == "tool.call" and resource not in me.allowed_tools:
            judgement = _deny(f"tool {resource} is not in {me.name}'s allowed tools")
        elif action == "agent.delegate":
            widened = set(cleaned["scopes"]) - held
            if widened:
                judgement = _deny(f"cannot delegate scopes it does not hold: {', '.join(sorted(widened))}")

    # 3. Policies.
    estimate = billing.estimate_cost(action=action, resource=resource, cleaned=cleaned, at=now)
    local = _local_now()
    cedar_context = {
        "estimated_cost_micros": estimate.micros,
        "model": resource if action == "llm.call" else "",
        "data_classification": CLASSIFICATIONS.get(cleaned.get("classification", "public"), 0),
        "delegation_depth": delegation.depth if delegation is not None else 0,
        "hour": local.hour,
        "weekday": local.isoweekday(),
    }
    entities: list[dict] = []
    policy_version = None
    if judgement is None:
        try:
            principal = agent_entity(name=me.name, owner=me.owner, team=me.team, clearance=me.clearance,
                                     models=me.allowed_models, tools=me.allowed_tools, role_names=role_names)
            entities = [principal, target]
            policy_set = policy_set_for(*me.policy_set)
            policy_version = policy_set.version
            decision = policy_set.decide(Request(action=action, agent=principal, resource=target, context=cedar_context))
            judgement = Judgement(decision.outcome, decision.reasons, decision.policies, decision.escalate_to,
                                  decision.observed)
        except ValidationError:
            raise
        except Exception as exc:  # the engine must never let an error through as "allowed"
            logger.exception("policy evaluation failed")
            judgement = _deny(f"policy evaluation error: {type(exc).__name__}")

    # 4. Budget: reserve at every covering budget, or at none.
    reserved = 0
    if judgement.outcome == ActionOutcome.ALLOWED:
        if estimate.problem:
            judgement = _deny(estimate.problem)
        else:
            reservation = billing.reserve(agent=agent, action_id=action_id, micros=estimate.micros, at=now,
                                          covering=me.budgets)
            if reservation.outcome != ActionOutcome.ALLOWED:
                judgement = Judgement(reservation.outcome, reservation.reasons, judgement.policies,
                                      reservation.escalate_to, judgement.observed)
            else:
                reserved = reservation.micros

    fields = {
        "id": action_id, "agent_id": agent.pk, "key_id": key.pk if key is not None else None,
        "delegation_id": delegation.pk if delegation is not None else None, "action": action, "resource": resource,
        "context": context, "cedar_context": cedar_context, "cedar_entities": entities,
        "idempotency_key": idempotency_key or None, "request_digest": digest, "outcome": judgement.outcome,
        "reasons": judgement.reasons, "policy_ids": judgement.policies, "observed": judgement.observed,
        "policy_version": policy_version, "delegation_chain": chain, "estimated_cost_micros": estimate.micros,
        "reserved_micros": reserved, "status": ActionStatus.DECIDED, "usage": None, "actual_cost_micros": None,
        "correlation_id": current_correlation_id(), "created_at": now, "completed_at": None,
    }
    sql.insert("governance_action", fields, json_fields=ACTION_JSON_FIELDS)
    record = sql.as_saved(Action, fields)
    record.agent = agent
    if judgement.outcome == ActionOutcome.PENDING_APPROVAL:
        Approval.objects.create(action=record, group=judgement.escalate_to[0] if judgement.escalate_to else "admin",
                                reasons=judgement.reasons)

    # 5. Audit, in the same transaction.
    audit_record(
        action=f"gate.{action}",
        actor=Actor("agent", str(agent.pk), me.name),
        agent=agent,
        team=me.team,
        resource=f"{ACTION_RESOURCE[action]}::{resource}",
        outcome=judgement.outcome,
        reasons=judgement.reasons,
        delegation_chain=chain,
        policy_ids=judgement.policies,
        policy_version=policy_version,
        cost_micros=estimate.micros,
        data_classification=cleaned.get("classification", ""),
        payload={"action_id": str(record.pk), "reserved_micros": reserved, "observed": judgement.observed,
                 "idempotency_key": idempotency_key or ""},
    )
    if me.last_seen_at is None or me.last_seen_at < now - dt.timedelta(seconds=30):
        Agent.objects.filter(pk=agent.pk).update(last_seen_at=now)
    return record


COMPLETION_STATUSES = (ActionStatus.SUCCEEDED, ActionStatus.FAILED)


@transaction.atomic
def complete_action(*, action: Action, status: str, usage: dict | None = None, cost_micros: int | None = None) -> Action:
    """Record what happened; settle the reservation. Idempotent for the same report."""
    if status not in COMPLETION_STATUSES:
        raise ValidationError({"status": "Either succeeded or failed."})
    record = Action.objects.select_for_update(of=("self",)).select_related("agent__team").get(pk=action.pk)
    report = {"status": status, "usage": usage, "cost_micros": cost_micros}
    if record.status in COMPLETION_STATUSES:
        if record.usage == report:
            return record
        raise Conflict("This action was already completed with a different report.", code="already_completed")
    if record.outcome != ActionOutcome.ALLOWED:
        raise Conflict(f"Only an allowed action can be completed; this one was {record.outcome}.", code="not_allowed")
    if record.status == ActionStatus.EXPIRED:
        raise Conflict("The reservation of this action expired; ask the gate again.", code="expired")
    actual = billing.actual_cost(action=record, status=status, usage=usage, cost_micros=cost_micros)
    record.status = status
    record.usage = report
    record.actual_cost_micros = actual
    record.completed_at = timezone.now()
    record.save(update_fields=["status", "usage", "actual_cost_micros", "completed_at"])
    settlement = billing.settle(action=record, actual_micros=actual)
    audit_record(
        action="gate.complete",
        actor=record.agent,
        agent=record.agent,
        resource=f"{ACTION_RESOURCE[record.action]}::{record.resource}",
        outcome=status,
        cost_micros=actual,
        payload={"action_id": str(record.pk), "usage": usage, "reserved_micros": record.reserved_micros,
                 **settlement},
    )
    return record
