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

import dataclasses
import datetime as dt
import functools
import hashlib
import json
import logging
import time
import uuid
import zoneinfo
from dataclasses import dataclass

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from django.db import connection

from agents.models import Agent, AgentStatus, Clearance, Delegation
from agents.selectors import delegation_state
from audit.services import Actor, audit_record
from billing import services as billing

from . import hotpath, metrics, sql
from .context import current_correlation_id
from .exceptions import Conflict
from .dataviews import served_classification
from .flow import (OUTBOUND, RESERVED_KEY_PREFIXES, RUNTIME_KEY_PREFIX, Flow, api_flow_of_chain, flow_of,
                   sink_clearance)
from .approvals import approval_open
from .models import Action, ActionOutcome, ActionStatus, DataView
from .payloads import check_json, clean_usage, text_problem
from .policy_engine import ACTION_RESOURCE, Request
from .selectors import KEY_LIVE, agent_roles, live_roles, policy_set_for, usable_now
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
    approvals: int = 1  # a pending approval: distinct approvers needed
    expires_in: int | None = None  # a pending approval: seconds it may wait (None: the default)
    over_budget_ids: tuple = ()  # a budget's escalation: the budgets it would exceed


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
    """Check what the caller asked for; raise ValidationError (400) when it cannot be judged.

    This is the edge for every transport: the context must be in the
    canonical form (governance.payloads) before anything stores or hashes it.
    """
    if action not in ACTION_RESOURCE:
        raise ValidationError({"action": f"Unknown action {action!r}; one of {', '.join(ACTION_RESOURCE)}."})
    if not isinstance(resource, str) or not resource.strip() or len(resource) > 255 or text_problem(resource):
        raise ValidationError({"resource": "A non-empty name of at most 255 characters."})
    if not isinstance(context, dict):
        raise ValidationError({"context": "Must be an object."})
    check_json(context, field="context")
    cleaned = {
        "estimated_cost_micros": _int(context, "estimated_cost_micros", required=False, maximum=MAX_COST_MICROS),
    }
    if action == "llm.call":
        cleaned["input_tokens"] = _int(context, "input_tokens", required=True, maximum=MAX_TOKENS)
        cleaned["max_output_tokens"] = _int(context, "max_output_tokens", required=True, maximum=MAX_TOKENS)
    if "classification" in context:
        # Only ever compared with the registry's (data.read) and noted: it decides nothing.
        if not isinstance(context["classification"], str) or context["classification"] not in CLASSIFICATIONS:
            raise ValidationError({"context.classification": f"One of {', '.join(CLASSIFICATIONS)}."})
        cleaned["claimed_classification"] = context["classification"]
    if "data_classification" in context:
        # What an agent over the API says it carries: it may raise the label of the request, never lower it.
        declared = context["data_classification"]
        if not isinstance(declared, str) or declared not in CLASSIFICATIONS:
            raise ValidationError({"context.data_classification": f"One of {', '.join(CLASSIFICATIONS)}."})
        cleaned["declared_label"] = CLASSIFICATIONS[declared]
    if action in ("tool.http", "external.call"):
        host = billing.endpoint_host(resource)
        if not host:
            raise ValidationError({"resource": "Give a URL or a host name."})
        cleaned["host"] = host
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


@dataclass(frozen=True)
class Target:
    entity: dict  # the resource as Cedar sees it
    classification: int = 0  # of the data touched, from Warden's registry
    problem: str | None = None  # why it cannot be acted on at all (an unknown data view): a denial
    notes: tuple[str, ...] = ()  # what the decision should say besides (a classification claim ignored)
    view: DataView | None = None  # data.read: the view as registered (its masks decide what a reader gets)


def _target(action: str, resource: str, cleaned: dict, at: dt.datetime) -> Target:
    """The resource as Warden knows it. What the caller says about it decides nothing."""
    kind = ACTION_RESOURCE[action]
    notes = ()
    claimed = cleaned.get("claimed_classification")
    if kind == "Agent":
        target = Agent.objects.select_related("owner", "team").filter(name=resource).first()
        if target is None:
            raise ValidationError({"resource": f"No agent named {resource!r}."})
        roles = agent_roles(target.pk, at=at).names
        entity = agent_entity(name=target.name, owner=target.owner.get_username(), team=target.team.name,
                              clearance=target.clearance, models=target.allowed_models,
                              tools=target.allowed_tools, role_names=roles)
    elif kind == "DataView":
        view = DataView.objects.filter(name=resource).first()
        entity = {"uid": {"type": kind, "id": resource},
                  "attrs": {"classification": view.classification if view else 3}, "parents": []}
        if view is None:
            return Target(entity, classification=3,
                          problem=f"no data view named {resource} in Warden's registry; an admin must register it")
        if not view.active:
            return Target(entity, classification=view.classification, problem=f"data view {resource} is retired")
        if claimed is not None and claimed != Clearance(view.classification).label:
            notes = (f"context.classification ({claimed}) disagrees with Warden's registry of data views and "
                     "was ignored",)
        return Target(entity, classification=view.classification, notes=notes, view=view)
    else:
        attrs = {"host": cleaned["host"]} if kind == "Endpoint" else {}
        entity = {"uid": {"type": kind, "id": cleaned["host"] if kind == "Endpoint" else resource}, "attrs": attrs,
                  "parents": []}
    if claimed is not None:
        notes = (f"context.classification ({claimed}) was ignored: classifications come from Warden's registry "
                 "of data views",)
    return Target(entity, notes=notes)


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
    open_periods: int  # of their periods this month, those that exist already
    key_usable: bool  # the key the request came with (if any) is this agent's, unrevoked and unexpired now


SNAPSHOT_SQL = """
SELECT a.name, a.status, a.status_reason, a.clearance, a.allowed_models, a.allowed_tools, a.last_seen_at,
       u.{username}, t.name,
       COALESCE((SELECT json_agg(json_build_array(r.name, r.scopes, g.expires_at))
                 FROM governance_rolegrant g JOIN governance_role r ON r.id = g.role_id
                 WHERE g.agent_id = a.id AND g.revoked_at IS NULL), '[]'::json),
       (SELECT json_build_array(number, created_at) FROM governance_policysetversion ORDER BY number DESC LIMIT 1),
       (SELECT count(*) FROM billing_budget b WHERE b.active AND {covering}),
       {open_periods},
       (SELECT json_build_array(k.agent_id, {key_live}) FROM agents_agentkey k WHERE k.id = %s)
FROM agents_agent a JOIN {users} u ON u.id = a.owner_id JOIN agents_team t ON t.id = a.team_id
WHERE a.id = %s
"""


@functools.lru_cache(maxsize=1)
def _snapshot_sql() -> str:
    from django.contrib.auth import get_user_model

    User = get_user_model()
    return SNAPSHOT_SQL.format(username=User._meta.get_field(User.USERNAME_FIELD).column, users=User._meta.db_table,
                               covering=billing.covering("a.team_id", "a.id"),
                               open_periods=billing.open_periods("a.team_id", "a.id", "%s"), key_live=KEY_LIVE)


def _snapshot(agent_id, month: dt.date, key_id) -> Snapshot:
    with hotpath.prepared_cursor() as cursor:  # planning it took longer than running it
        cursor.execute(_snapshot_sql(), [month, key_id, agent_id])
        row = cursor.fetchone()
    if row is None:
        raise Agent.DoesNotExist
    return _snapshot_of(row, key_id=key_id, agent_id=agent_id)


def _snapshot_of(row, *, key_id, agent_id) -> Snapshot:
    *fields, grants, policy_set, budgets, open_periods, key = row
    policy_set = (int(policy_set[0]), dt.datetime.fromisoformat(policy_set[1]).isoformat()) if policy_set else (0, "")
    key_usable = key is None if key_id is None else (key is not None and key[1] and key[0] == str(agent_id))
    return Snapshot(*fields, grants=grants, policy_set=policy_set, budgets=budgets, open_periods=open_periods,
                    key_usable=key_usable)


def _local_now() -> dt.datetime:
    return timezone.now().astimezone(zoneinfo.ZoneInfo(settings.WARDEN_TIMEZONE))


def _about_flow(policy_set, names) -> bool:
    """Whether one of these (escalating) policies is about data flow: only such a policy may send a flow the
    rule denies to a person instead (one about cost, say, must not turn a leak into a finance approval)."""
    return any(row.name in names and ("data_classification" in row.body or "sink_clearance" in row.body)
               for row in policy_set.rows)


def _deny(reason: str) -> Judgement:
    return Judgement(ActionOutcome.DENIED, [reason], [], [])


def _identity_problem(*, name: str, status: str, status_reason: str, key_usable: bool) -> str | None:
    """Why this agent, with the key it came with, may not act now (None when it may)."""
    if not key_usable:
        return "the agent key is revoked, expired or not this agent's"
    if status != AgentStatus.ACTIVE:
        return f"agent {name} is {status}" + (f": {status_reason}" if status_reason else "")
    return None


class _Superseded(Exception):
    """The agent's status or key changed while this decision was being made: judge again."""


def request_action(
    *,
    agent: Agent,
    action: str,
    resource: str,
    context: dict | None = None,
    key=None,
    on_behalf_of=None,
    idempotency_key: str | None = None,
    flow: Flow | None = None,
) -> Action:
    """Judge one action. Raises ValidationError (cannot be judged) or Conflict (idempotency).

    `flow` is the label of what the request carries, from Warden's own runtime (in process, never from a
    request); without it, an outbound request carries what the agent read over the API (governance/flow.py)."""
    context = context if context is not None else {}
    cleaned = clean_request(action=action, resource=resource, context=context)
    if idempotency_key is not None and (not isinstance(idempotency_key, str) or text_problem(idempotency_key)):
        raise ValidationError({"idempotency_key": "A string without NUL characters."})
    digest = request_digest(action=action, resource=resource, context=context, on_behalf_of=on_behalf_of)
    request = dict(agent=agent, action=action, resource=resource, context=context, cleaned=cleaned, key=key,
                   on_behalf_of=on_behalf_of, digest=digest, flow=flow)
    with tracer.start_as_current_span("gate.request_action") as span:
        span.set_attribute("warden.action", action)
        if idempotency_key:
            existing = Action.objects.filter(agent_id=agent.pk, idempotency_key=idempotency_key).first()
            if existing is not None:
                return _replay(existing, request)
        try:
            return _judge_now(**request, idempotency_key=idempotency_key)
        except IntegrityError:
            # A concurrent request with the same idempotency key won the race.
            if not idempotency_key:
                raise
            existing = Action.objects.get(agent_id=agent.pk, idempotency_key=idempotency_key)
            return _replay(existing, request)


def _judge_now(**request) -> Action:
    for _ in range(3):
        try:
            return _judge(**request)
        except _Superseded:
            continue  # judged again: the new status is read at the start
    # The status kept changing under it (suspended, resumed, suspended ...): fail closed.
    return _judge(**request, denial="the agent's status or key changed while this request was judged; ask again")


def _replay(existing: Action, request: dict) -> Action:
    """The same request again: the recorded Action, if the agent and its key may still act now.

    A replay is judged against the present: from an agent that has since been
    suspended or retired, or with a revoked key or a delegation no longer
    valid, it is a new denial (recorded and audited like any other), never the
    old "allowed"; what the old action still held is cancelled.
    """
    if existing.request_digest != request["digest"]:
        raise Conflict("This idempotency key was used for a different request.", code="idempotency_mismatch")
    agent = Agent.objects.filter(pk=existing.agent_id).values_list("name", "status", "status_reason").first()
    now = timezone.now()
    key = request["key"]
    _, key_usable = usable_now(existing.agent_id, key.pk if key is not None else None)
    problem = _identity_problem(name=agent[0], status=agent[1], status_reason=agent[2], key_usable=key_usable)
    if problem is None and existing.delegation_id is not None:
        problem = delegation_state(Delegation.objects.get(pk=existing.delegation_id), at=now).problem
    if problem is None:
        return existing
    if existing.outcome == ActionOutcome.ALLOWED and existing.status == ActionStatus.DECIDED:
        actions_cancel(agent=existing.agent, by=None, reason=f"replayed while {problem}", action_ids=[existing.pk])
    return _judge(**request, idempotency_key=None,
                  denial=f"replay of action {existing.pk} (idempotency key {existing.idempotency_key}): {problem}")


def _judge(**request) -> Action:
    """The hot path (governance/hotpath.py: one read, one write) for what it can decide on its own; the
    slow path, one statement at a time in a transaction, for everything else and whenever the hot path's
    read has gone stale by the time it writes."""
    if (settings.WARDEN_GATE_HOT_PATH and request.get("denial") is None and request["on_behalf_of"] is None
            and request["action"] in hotpath.ACTIONS):
        record = _judge_fast(**request)
        if record is not None:
            return record
    return _judge_slow(**request)


def _scopes(*, action: str, resource: str, cleaned: dict, me: Snapshot, roles, state) -> Judgement | None:
    """Step 2: the scopes (and the agent's capability lists); a denial, or None."""
    held = state.scopes if state is not None else roles.scopes
    if action not in held:
        if state is not None and action in state.narrowed:
            return _deny(f"scope {action} was delegated, but {state.root}, who delegated it, no longer holds it")
        if state is not None:
            return _deny(f"scope {action} is not in the delegation (it holds {', '.join(sorted(held)) or 'nothing now'})")
        if roles.expired and action not in roles.scopes:
            return _deny(f"scope {action} is not granted; role grant(s) expired: {', '.join(roles.expired)}")
        return _deny(f"scope {action} is not granted by the agent's roles ({', '.join(sorted(roles.names)) or 'none'})")
    if action == "llm.call" and resource not in me.allowed_models:
        return _deny(f"model {resource} is not in {me.name}'s allowed models")
    if action == "tool.call" and resource not in me.allowed_tools:
        return _deny(f"tool {resource} is not in {me.name}'s allowed tools")
    if action == "agent.delegate":
        widened = set(cleaned["scopes"]) - held
        if widened:
            return _deny(f"cannot delegate scopes it does not hold: {', '.join(sorted(widened))}")
    return None


@dataclass
class _Assessment:
    judgement: Judgement
    cedar_context: dict
    entities: list
    policy_version: int | None


def _assess(*, judgement: Judgement | None, action: str, resource: str, me: Snapshot, roles, target: Target,
            estimate, carried: Flow | None, sink: int, sink_name: str, delegation) -> _Assessment:
    """Step 3: the policies, on Warden's own figures (its estimate, the registry's classification), and the
    data-flow rule; then an unpriced request is denied. Pure: both paths read the facts first."""
    local = _local_now()
    cedar_context = {
        "estimated_cost_micros": estimate.micros,
        "model": resource if action == "llm.call" else "",
        "data_classification": carried.classification if carried is not None else target.classification,
        "sink_clearance": int(sink),
        "delegation_depth": delegation.depth if delegation is not None else 0,
        "hour": local.hour,
        "weekday": local.isoweekday(),
    }
    entities: list[dict] = []
    policy_version = None
    if judgement is None:
        try:
            principal = agent_entity(name=me.name, owner=me.owner, team=me.team, clearance=me.clearance,
                                     models=me.allowed_models, tools=me.allowed_tools, role_names=roles.names)
            entities = [principal, target.entity]
            policy_set = policy_set_for(*me.policy_set)
            policy_version = policy_set.version
            decision = policy_set.decide(Request(action=action, agent=principal, resource=target.entity,
                                                 context=cedar_context))
            judgement = Judgement(decision.outcome, decision.reasons, decision.policies, decision.escalate_to,
                                  decision.observed, decision.approvals, decision.expires)
            if carried is not None and carried.classification > sink:
                # The flow rule: a denial naming the data's source, unless a policy about data flow (one that
                # reads data_classification or sink_clearance) sends it to a person.
                leak = (f"data flow: {sink_name} is cleared for {Clearance(sink).label} data; this request "
                        f"{carried.describe()}" if action != "data.read" else
                        f"data flow: agent {me.name} is cleared for {Clearance(sink).label} data; {resource} would "
                        f"give it {Clearance(carried.classification).label} data (nothing of that is masked at "
                        "its clearance)")
                if judgement.outcome == ActionOutcome.PENDING_APPROVAL and _about_flow(policy_set, judgement.policies):
                    judgement = dataclasses.replace(judgement, reasons=[*judgement.reasons, leak])
                elif judgement.outcome != ActionOutcome.DENIED:
                    judgement = _deny(leak)
        except ValidationError:
            raise
        except Exception as exc:  # the engine must never let an error through as "allowed"
            logger.exception("policy evaluation failed")
            judgement = _deny(f"policy evaluation error: {type(exc).__name__}")
    # Nothing unpriced is allowed, nor waits for a person.
    if judgement.outcome in (ActionOutcome.ALLOWED, ActionOutcome.PENDING_APPROVAL) and estimate.problem:
        judgement = _deny(estimate.problem)
    return _Assessment(judgement, cedar_context, entities, policy_version)


def _records(*, action_id, agent, key, delegation, action: str, resource: str, context: dict, digest: str,
             idempotency_key, now, me: Snapshot, target: Target, assessment: _Assessment, judgement: Judgement,
             reasons: list, estimate, reserved: int, chain: list, carried: Flow | None, sink: int,
             sink_name: str) -> tuple[dict, dict]:
    """(the Action's row, the audit event's arguments): what both paths write."""
    fields = {
        "id": action_id, "agent_id": agent.pk, "key_id": key.pk if key is not None else None,
        "delegation_id": delegation.pk if delegation is not None else None, "action": action, "resource": resource,
        "context": context, "cedar_context": assessment.cedar_context, "cedar_entities": assessment.entities,
        "idempotency_key": idempotency_key or None, "request_digest": digest, "outcome": judgement.outcome,
        "reasons": reasons, "policy_ids": judgement.policies, "observed": judgement.observed,
        "policy_version": assessment.policy_version, "delegation_chain": chain,
        "estimated_cost_micros": estimate.micros, "reserved_micros": reserved,
        "allowed_at": now if judgement.outcome == ActionOutcome.ALLOWED else None,
        "status": ActionStatus.DECIDED, "usage": None, "actual_cost_micros": None,
        "correlation_id": current_correlation_id(), "created_at": now, "completed_at": None,
    }
    event = dict(
        action=f"gate.{action}",
        actor=Actor("agent", str(agent.pk), me.name),
        agent=agent,
        team=me.team,
        resource=f"{ACTION_RESOURCE[action]}::{resource}",
        outcome=judgement.outcome,
        reasons=reasons,
        delegation_chain=chain,
        policy_ids=judgement.policies,
        policy_version=assessment.policy_version,
        cost_micros=estimate.micros,
        data_classification=(Clearance(target.classification).label if action == "data.read" else
                             Clearance(carried.classification).label if carried is not None and carried.classification
                             else ""),
        payload={"action_id": str(action_id), "reserved_micros": reserved, "observed": judgement.observed,
                 "idempotency_key": idempotency_key or "", "warden_estimate_micros": estimate.warden_micros,
                 **({"data_flow": {**carried.as_dict(), "receiver": sink_name,
                                   "receiver_clearance": Clearance(sink).label}}
                    if carried is not None and carried.classification else {})},
    )
    return fields, event


def _touch(me: Snapshot, now: dt.datetime) -> bool:
    """Whether to write the agent's last_seen_at (at most every 30 s)."""
    return me.last_seen_at is None or me.last_seen_at < now - dt.timedelta(seconds=30)


def _counted(*, action: str, outcome: str, team: str, reserved: int, stages: dict) -> None:
    """Counted once the decision is committed (never for one that rolled back)."""
    transaction.on_commit(lambda: metrics.decision(action=action, outcome=outcome, team=team, reserved=reserved,
                                                   stages=stages))


def _judge_fast(*, agent, action, resource, context, cleaned, key, on_behalf_of, idempotency_key, digest,
                flow=None, denial=None) -> Action | None:
    """One read (hotpath.read), the judgement in Python, one write (hotpath.commit); None when the write
    finds the world changed since the read, or when the decision needs what only the slow path writes (an
    approval request, a budget's refusal, a month's first budget periods)."""
    now = timezone.now()
    action_id = uuid.uuid4()
    started = time.perf_counter()
    key_id = key.pk if key is not None else None
    want_flow = flow is None and action in OUTBOUND
    facts = hotpath.read(agent_id=agent.pk, key_id=key_id, action=action, resource=resource,
                         host=cleaned.get("host"), now=now, want_flow=want_flow)
    me = facts.me
    problem = _identity_problem(name=me.name, status=me.status, status_reason=me.status_reason,
                                key_usable=me.key_usable)
    judgement = _deny(problem) if problem else None
    target = _target(action, resource, cleaned, now)  # Model, Tool, Endpoint: no query
    notes = list(target.notes)
    roles = live_roles(me.grants, at=now)
    if judgement is None:
        judgement = _scopes(action=action, resource=resource, cleaned=cleaned, me=me, roles=roles, state=None)
    identified = time.perf_counter()
    estimate = billing.estimate_cost(action=action, resource=resource, cleaned=cleaned, at=now, price=facts.price)
    carried = flow if flow is not None else flow_of(reads=facts.reads, tools=facts.tools,
                                                    declared=cleaned.get("declared_label"))
    sink, sink_name = sink_clearance(action=action, resource=resource, host=cleaned.get("host"), found=facts.sinks)
    assessment = _assess(judgement=judgement, action=action, resource=resource, me=me, roles=roles, target=target,
                         estimate=estimate, carried=carried, sink=sink, sink_name=sink_name, delegation=None)
    judgement = assessment.judgement
    judged = time.perf_counter()
    if judgement.outcome == ActionOutcome.PENDING_APPROVAL:
        return None  # an approval request: the slow path writes it
    allowed = judgement.outcome == ActionOutcome.ALLOWED
    if allowed and estimate.micros and me.budgets and me.open_periods < me.budgets:
        return None  # the month's first request: the slow path opens the budget periods
    reserved = estimate.micros if allowed else 0  # as billing.reserve holds it, covered or not
    fields, event = _records(action_id=action_id, agent=agent, key=key, delegation=None, action=action,
                             resource=resource, context=context, digest=digest, idempotency_key=idempotency_key,
                             now=now, me=me, target=target, assessment=assessment, judgement=judgement,
                             reasons=[*judgement.reasons, *notes], estimate=estimate, reserved=reserved, chain=[],
                             carried=carried, sink=sink, sink_name=sink_name)
    written = hotpath.commit(action=fields, event=event, agent=agent, key_id=key_id,
                             month=billing.period_start(now), budgets=me.budgets, reserve=reserved,
                             touch=now if _touch(me, now) else None, check_identity=judgement.outcome != ActionOutcome.DENIED)
    if written is None:
        return None
    done = time.perf_counter()
    _counted(action=action, outcome=judgement.outcome, team=me.team, reserved=reserved,
             stages={"identity": identified - started, "policy": judged - identified, "write": done - judged})
    record = sql.as_saved(Action, fields)
    record.agent = agent
    Action.approval.related.set_cached_value(record, None)  # none: nothing on this path waits for a person
    return record


@transaction.atomic
def _judge_slow(*, agent, action, resource, context, cleaned, key, on_behalf_of, idempotency_key, digest,
                flow=None, denial: str | None = None) -> Action:
    now = timezone.now()
    action_id = uuid.uuid4()
    started = time.perf_counter()
    # 1. Identity: the newest committed state, read inside this transaction.
    me = _snapshot(agent.pk, billing.period_start(now), key.pk if key is not None else None)
    judgement: Judgement | None = _deny(denial) if denial else None
    problem = _identity_problem(name=me.name, status=me.status, status_reason=me.status_reason,
                                key_usable=me.key_usable)
    if judgement is None and problem:
        judgement = _deny(problem)
    try:
        target = _target(action, resource, cleaned, now)  # an unknown agent cannot be judged; an unknown view is denied
    except ValidationError:
        if judgement is None:
            raise
        # Denied anyway: say nothing about which agents exist to an identity that may not act.
        target = Target({"uid": {"type": ACTION_RESOURCE[action], "id": resource}, "attrs": {}, "parents": []})
    notes = list(target.notes)
    delegation = None
    chain: list[dict] = []
    state = None
    if on_behalf_of is not None:
        delegation = Delegation.objects.select_related("delegate", "delegator_user", "delegator_agent").filter(
            pk=on_behalf_of
        ).first()
        if delegation is None or delegation.delegate_id != agent.pk:
            raise ValidationError({"on_behalf_of": "No such delegation to this agent."})
        state = delegation_state(delegation, at=now)
        chain = state.chain
        if judgement is None and state.problem:
            judgement = _deny(f"delegation chain is not valid: {state.problem}")
    if judgement is None and target.problem:
        judgement = _deny(target.problem)

    # 2. Scopes (and the agent's capability lists).
    roles = live_roles(me.grants, at=now)
    if judgement is None:
        judgement = _scopes(action=action, resource=resource, cleaned=cleaned, me=me, roles=roles, state=state)

    # 3. Policies, on Warden's own figures: its estimate, the registry's classification.
    identified = time.perf_counter()
    estimate = billing.estimate_cost(action=action, resource=resource, cleaned=cleaned, at=now)
    # What the request carries, and how sensitive data its receiver may get (governance/flow.py).
    carried, sink, sink_name = None, me.clearance, f"agent {me.name}"
    if action in OUTBOUND:
        if flow is not None:
            carried = flow
        else:  # over the API: what it read lately, and what every agent it acts for read (the chain's)
            carried = api_flow_of_chain(agent_id=agent.pk, chain=chain, now=now, declared=cleaned.get("declared_label"))
        sink, sink_name = sink_clearance(action=action, resource=resource, host=cleaned.get("host"))
    elif action == "data.read" and target.view is not None:
        # What this reader gets (its clearance decides the masks): a flow from the view to the agent itself.
        asked = context.get("columns")
        asked = [c for c in asked if isinstance(c, str)] if isinstance(asked, list) else None
        served = served_classification(target.view, me.clearance, asked)
        carried = Flow(served, ({"view": resource, "classification": Clearance(served).label},))
        target = dataclasses.replace(target, classification=served)
    assessment = _assess(judgement=judgement, action=action, resource=resource, me=me, roles=roles, target=target,
                         estimate=estimate, carried=carried, sink=sink, sink_name=sink_name, delegation=delegation)
    judgement = assessment.judgement

    # 4. Budget: reserve at every covering budget, or at none.
    judged = time.perf_counter()
    reserved = 0
    if judgement.outcome == ActionOutcome.ALLOWED:
        reservation = billing.reserve(agent=agent, action_id=action_id, micros=estimate.micros, at=now,
                                      covering=me.budgets, open_=me.open_periods)
        if reservation.outcome != ActionOutcome.ALLOWED:
            judgement = Judgement(reservation.outcome, reservation.reasons, judgement.policies,
                                  reservation.escalate_to, judgement.observed, reservation.approvals,
                                  reservation.expires_hours * 3600 if reservation.expires_hours else None,
                                  tuple(reservation.over_budget_ids))
        else:
            reserved = reservation.micros
    reasons = [*judgement.reasons, *notes]
    budgeted = time.perf_counter()

    fields, event = _records(action_id=action_id, agent=agent, key=key, delegation=delegation, action=action,
                             resource=resource, context=context, digest=digest, idempotency_key=idempotency_key,
                             now=now, me=me, target=target, assessment=assessment, judgement=judgement,
                             reasons=reasons, estimate=estimate, reserved=reserved, chain=chain, carried=carried,
                             sink=sink, sink_name=sink_name)
    sql.insert("governance_action", fields, json_fields=ACTION_JSON_FIELDS)
    record = sql.as_saved(Action, fields)
    record.agent = agent
    approval = None
    if judgement.outcome == ActionOutcome.PENDING_APPROVAL:
        approval = approval_open(action=record, groups=judgement.escalate_to or ["admin"], reasons=judgement.reasons,
                                 approvals=judgement.approvals, expires_in=judgement.expires_in,
                                 budget_ids=judgement.over_budget_ids, now=now)
    Action.approval.related.set_cached_value(record, approval)  # what the answer shows, without asking again
    # Before the audit event: the agent row, then its chain head, as a suspension takes them.
    if _touch(me, now):
        Agent.objects.filter(pk=agent.pk).update(last_seen_at=now)

    # 5. Audit, in the same transaction.
    audit_record(**event)
    # The chain head is held now; a suspension or key revocation that committed while this decision was
    # made has written to it first, so a fresh read sees it. Allow nothing on a withdrawn identity.
    if judgement.outcome != ActionOutcome.DENIED and not all(usable_now(agent.pk, key.pk if key is not None else None)):
        raise _Superseded
    done = time.perf_counter()
    _counted(action=action, outcome=judgement.outcome, team=me.team, reserved=reserved,
             stages={"identity": identified - started, "policy": judged - identified, "budget": budgeted - judged,
                     "audit": done - budgeted})
    return record


COMPLETION_STATUSES = (ActionStatus.SUCCEEDED, ActionStatus.FAILED)

# Idempotency keys of this prefix (flow.RUNTIME_KEY_PREFIX, "run:") belong to Warden's runtime (agents/runtime):
# its steps' Actions. An agent may not use them over the REST API (it could take over a step's Action), nor
# complete such an Action with its own claims.


def is_runtime_action(action: Action) -> bool:
    return (action.idempotency_key or "").startswith(RUNTIME_KEY_PREFIX)


def is_settled_by_warden(action: Action) -> bool:
    """An Action Warden itself completes from what the provider answered (the runtime's, the gateway's): an
    agent may not complete it with its own claims."""
    return (action.idempotency_key or "").startswith(RESERVED_KEY_PREFIXES)


CLOSED_STATUSES = (ActionStatus.EXPIRED, ActionStatus.CANCELLED)
USAGE_SOURCES = ("agent", "provider", "warden", "simulated")  # simulated: the offline provider or a demo tool


@transaction.atomic
def complete_action(*, action: Action, status: str, usage: dict | None = None, usage_source: str,
                    declared_cost_micros: int | None = None) -> Action:
    """Record what happened; settle the reservation at Warden's prices. Idempotent for the same report.

    The cost is Warden's price applied to the usage reported; `usage_source`
    says who reported it (the agent itself over the REST API: a claim). A cost
    the agent declares is kept as a remark and decides nothing. A completion
    that arrives after the reservation was released (swept, or cancelled by a
    suspension) is still recorded and its spend counted, flagged unreserved:
    money spent is never dropped.
    """
    if status not in COMPLETION_STATUSES:
        raise ValidationError({"status": "Either succeeded or failed."})
    if usage_source not in USAGE_SOURCES:
        raise ValueError(f"usage_source must be one of {USAGE_SOURCES}")
    usage = clean_usage(usage)
    if declared_cost_micros is not None:
        declared_cost_micros = billing.money(declared_cost_micros, "cost")
    record = Action.objects.select_for_update(of=("self",)).select_related("agent__team").get(pk=action.pk)
    report = {"status": status, "usage": usage, "usage_source": usage_source}
    if declared_cost_micros is not None:
        report["declared_cost_micros"] = declared_cost_micros
    if record.status in COMPLETION_STATUSES:
        if record.usage == report:
            return record
        raise Conflict("This action was already completed with a different report.", code="already_completed")
    late = record.status in CLOSED_STATUSES
    if record.outcome != ActionOutcome.ALLOWED and not (record.status == ActionStatus.CANCELLED):
        raise Conflict(f"Only an allowed action can be completed; this one was {record.outcome}.", code="not_allowed")
    if usage is not None and record.action == "llm.call" and usage.get("model", record.resource) != record.resource:
        raise ValidationError({"usage.model": f"This action reserved model {record.resource}, not {usage['model']!r}."})
    charge = billing.actual_cost(action=record, status=status, usage=usage, trusted=usage_source != "agent")
    actual = charge.micros
    was = record.status
    record.status = status
    record.usage = report
    record.actual_cost_micros = actual
    record.completed_at = timezone.now()
    record.save(update_fields=["status", "usage", "actual_cost_micros", "completed_at"])
    settlement = billing.settle(action=record, charge=charge, usage_source=usage_source, unreserved=late)
    audit_record(
        action="gate.complete",
        actor=record.agent,
        agent=record.agent,
        resource=f"{ACTION_RESOURCE[record.action]}::{record.resource}",
        outcome=status,
        cost_micros=actual,
        reasons=[f"completed after the action was {was}: the spend is recorded, unreserved"] if late else [],
        delegation_chain=record.delegation_chain or [],
        payload={"action_id": str(record.pk), "usage": usage, "usage_source": usage_source,
                 "declared_cost_micros": declared_cost_micros, "reserved_micros": record.reserved_micros,
                 **settlement},
    )
    if actual:
        # Labels stay few: a model or tool (each in an agent's allowed list and priced), but never a URL or host
        # an agent chose (each would be a new series in every scraper).
        team = record.agent.team.name
        spent_on = record.resource[:100] if record.action in ("llm.call", "tool.call") else record.action

        def counted():
            metrics.safely(lambda: metrics.SPENT.labels(team, spent_on).inc(actual))

        transaction.on_commit(counted)
    return record


# --- closing what was allowed and never completed ---------------------------------------------------

SWEEP_BATCH = 50


def _close(*, where: str, params: list, status: str, skip_locked: bool, limit: int, event: str, reason,
           actor=None) -> int:
    """Close up to `limit` open allowed actions matching `where`, in one transaction; how many were closed.

    Locks in the order the gate and completions take them, so none of them
    can deadlock with this: the actions (id order), then their budget periods
    (budget order, billing.release), then the audit chain heads (chain order).
    """
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            f"""
            SELECT id FROM governance_action
            WHERE outcome = 'allowed' AND status = 'decided' AND {where}
            ORDER BY id LIMIT %s FOR UPDATE {'SKIP LOCKED' if skip_locked else ''}
            """,
            [*params, limit],
        )
        ids = [row[0] for row in cursor.fetchall()]
        if not ids:
            return 0
        billing.release(action_ids=ids)
        closed = list(Action.objects.filter(pk__in=ids).select_related("agent__team"))
        closed.sort(key=lambda item: (str(item.agent_id), str(item.pk)))
        for item in closed:
            why = reason(item)
            changes = {"status": status}
            if status == ActionStatus.CANCELLED:  # no longer allowed: say so wherever it is read
                changes.update(outcome=ActionOutcome.DENIED, reasons=[*item.reasons, f"cancelled: {why}"])
            Action.objects.filter(pk=item.pk).update(**changes)
            audit_record(action=event, actor=actor, agent=item.agent, resource=f"action:{item.pk}",
                         outcome=status, cost_micros=0, reasons=[why], delegation_chain=item.delegation_chain or [],
                         payload={"action_id": str(item.pk), "released_micros": item.reserved_micros})
        return len(ids)


def actions_cancel(*, agent, by, reason: str, action_ids=None) -> int:
    """Cancel the agent's open allowed actions (it was suspended or retired) and release what they held."""
    where, params = "agent_id = %s", [agent.pk]
    if action_ids is not None:
        where, params = "agent_id = %s AND id = ANY(%s)", [agent.pk, list(action_ids)]
    cancelled = 0
    while True:  # until nothing is left: a batch can come back short while a completion holds a row
        done = _close(where=where, params=params, status=ActionStatus.CANCELLED, skip_locked=False,
                      limit=SWEEP_BATCH, event="action.cancel", reason=lambda item: reason, actor=by)
        cancelled += done
        if not done:
            return cancelled


def actions_expire(*, older_than: dt.timedelta | None = None, batches: int = 20) -> int:
    """Release the reservations of allowed actions never completed in time (beat, every minute).

    Small batches, each its own transaction; actions a completion holds right
    now are skipped (it is about to settle them).
    """
    if older_than is None:
        older_than = dt.timedelta(seconds=settings.WARDEN_RESERVATION_TIMEOUT)
    cutoff = timezone.now() - older_than
    note = f"not completed within {int(older_than.total_seconds())} s; "
    expired = 0
    for _ in range(batches):
        done = _close(where="allowed_at < %s", params=[cutoff], status=ActionStatus.EXPIRED, skip_locked=True,
                      limit=SWEEP_BATCH, event="budget.reservation.expire",
                      reason=lambda item: note + f"{billing.dollars(item.reserved_micros)} released")
        expired += done
        if not done:
            break
    return expired


def could_allow(*, agent, key, action: str, resources: list[str]) -> set[str]:
    """Of these resources, those a request of this agent could be allowed now (what a catalogue may show it:
    the gateway's model and tool lists). Read only: nothing is reserved or recorded, and the real request is
    judged in full by request_action.

    Shown: the agent may act (active, key usable), its live roles grant the scope, its allowed models or
    tools name the resource, Warden has a price for it, and the policies do not deny a request of it that
    carries no sensitive data at its price (one they escalate to a person could be approved, so it is
    shown)."""
    now = timezone.now()
    me = _snapshot(agent.pk, billing.period_start(now), key.pk if key is not None else None)
    if _identity_problem(name=me.name, status=me.status, status_reason=me.status_reason, key_usable=me.key_usable):
        return set()
    roles = live_roles(me.grants, at=now)
    if action not in roles.scopes:
        return set()
    listed = {"llm.call": me.allowed_models, "tool.call": me.allowed_tools}.get(action)
    principal = agent_entity(name=me.name, owner=me.owner, team=me.team, clearance=me.clearance,
                             models=me.allowed_models, tools=me.allowed_tools, role_names=roles.names)
    policy_set = policy_set_for(*me.policy_set)
    local = _local_now()
    shown = set()
    for resource in resources:
        if listed is not None and resource not in listed:
            continue
        try:
            cleaned = clean_request(action=action, resource=resource,
                                    context={"input_tokens": 0, "max_output_tokens": 0} if action == "llm.call" else {})
            target = _target(action, resource, cleaned, now)
        except ValidationError:
            continue
        estimate = billing.estimate_cost(action=action, resource=resource, cleaned=cleaned, at=now)
        if target.problem or estimate.problem:
            continue
        sink = sink_clearance(action=action, resource=resource, host=cleaned.get("host"))[0] \
            if action in OUTBOUND else me.clearance
        context = {"estimated_cost_micros": estimate.micros, "model": resource if action == "llm.call" else "",
                   "data_classification": int(Clearance.PUBLIC), "sink_clearance": int(sink),
                   "delegation_depth": 0, "hour": local.hour, "weekday": local.isoweekday()}
        try:
            decision = policy_set.decide(Request(action=action, agent=principal, resource=target.entity,
                                                 context=context))
        except Exception:  # what cannot be evaluated is not offered
            logger.exception("policy preview failed")
            continue
        if decision.outcome != ActionOutcome.DENIED:
            shown.add(resource)
    return shown
