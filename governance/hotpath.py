"""The gate's hot path: one read, the judgement in Python, one write.

Most requests are a model, tool or HTTP call by an agent for itself. For those the gate
(`gate._judge_fast`) asks PostgreSQL twice:

1. `read`: one statement returns everything the judgement needs: the agent, its owner and team, its
   live grants, the key's state, the newest policy-set version, how many budgets cover it and how many
   of their periods this month are open, Warden's price for the resource, the receiving data sink's
   clearance, and what the agent read or was answered lately (governance/flow.py).
2. `commit`: one call of `warden_gate_commit` (governance migration 0011) writes the judgement
   atomically: the reservation at every covering budget (periods locked in budget order, each checked
   against its limit with the newest committed figures), the Action, the agent's last-seen time, the
   audit event, chained under the chain head's lock (Python sends the event's canonical bytes but for the
   link; the function hashes them with the link it takes), and a fresh check that the agent and its key may
   still act.

Both happen outside any transaction of Django's (each statement is its own; inside a caller's transaction
the write takes a savepoint). The write assumes what the read saw: if a budget would be exceeded, this
month's periods are not open yet, or the identity was withdrawn meanwhile (a suspension), it writes
nothing and answers NULL (SQLSTATE WG001 inside the function), and the gate judges the request again on
the slow path (`gate._judge_slow`), which takes its locks first and
writes approvals and budget refusals. So the two paths can never disagree about what is written: the
differential test (tests/gate/test_hotpath.py) runs generated requests through both.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
from dataclasses import dataclass

import orjson
from django.conf import settings
from django.db import connection, transaction
from django.db.backends.postgresql.base import ServerBindingCursor
from django.db.backends.utils import CursorWrapper

from audit.live import publish_on_commit
from audit.models import GENESIS
from audit.services import audit_fields, canonical_parts, chain_of
from billing import services as billing

from .flow import SINK_KIND, sink_name, windows

ACTIONS = frozenset({"llm.call", "tool.call", "tool.http", "external.call"})

READ_EXTRA = """
       (SELECT json_build_array(pr.input_per_million_micros, pr.output_per_million_micros, pr.per_call_micros)
        FROM billing_price pr WHERE pr.kind = %(price_kind)s AND pr.name = ANY(%(price_names)s)
                               AND pr.effective_from <= %(now)s
        ORDER BY pr.name = %(price_name)s DESC, pr.effective_from DESC LIMIT 1),
       (SELECT json_object_agg(s.name, s.clearance) FROM governance_datasink s
        WHERE s.kind = %(sink_kind)s AND s.name IN (%(sink_name)s, '*')),
       CASE WHEN %(flow)s THEN (
           SELECT json_agg(json_build_array(r.id, r.resource, r.level) ORDER BY r.level DESC, r.at DESC, r.id DESC)
           FROM (SELECT x.id, x.resource, (x.cedar_context ->> 'data_classification')::integer AS level,
                        COALESCE(x.completed_at, x.allowed_at, x.created_at) AS at
                 FROM governance_action x
                 WHERE x.agent_id = a.id AND x.action = 'data.read' AND x.outcome = 'allowed'
                   AND x.created_at >= %(asked_since)s
                   AND COALESCE(x.completed_at, x.allowed_at, x.created_at) >= %(since)s
                   AND NOT (x.idempotency_key LIKE 'run:%%' AND x.idempotency_key IS NOT NULL)
                 ORDER BY 3 DESC, 4 DESC, 1 DESC LIMIT 5) r) END,
       CASE WHEN %(flow)s THEN (
           SELECT json_agg(json_build_array(c.id, c.resource, c.returns) ORDER BY c.resource)
           FROM (SELECT tool.resource, tool.returns,
                        (SELECT x.id FROM governance_action x
                         WHERE x.agent_id = a.id AND x.action = 'tool.call' AND x.outcome = 'allowed'
                           AND x.resource = tool.resource AND x.created_at >= %(asked_since)s
                           AND x.status NOT IN ('cancelled', 'expired')
                           AND COALESCE(x.completed_at, x.allowed_at, x.created_at) >= %(since)s
                         ORDER BY COALESCE(x.completed_at, x.allowed_at, x.created_at) DESC, x.id DESC
                         LIMIT 1) AS id
                 FROM (SELECT sv.name || '/' || m.name AS resource, m.returns
                       FROM agents_mcptool m JOIN agents_mcpserver sv ON sv.id = m.server_id
                       WHERE m.returns > 0) tool) c
           WHERE c.id IS NOT NULL) END
"""


NEVER = 2**31 - 1  # a prepare threshold no statement reaches: only what asks (prepare=True) is prepared


class _PreparedCursor(ServerBindingCursor):
    """Binds on the server and prepares the statement on first use, once per connection. Django's own cursors
    bind on the client, so PostgreSQL parses and plans every statement anew: for the read, that took longer
    than running it."""

    def execute(self, query, params=None, *, prepare=None, binary=None):
        return super().execute(query, params, prepare=True, binary=binary)


def prepared_cursor() -> CursorWrapper:
    """A cursor of Django's connection that prepares, set up as `connection.cursor()` sets up its own (health
    check, thread check, error translation, query logging). WARDEN_GATE_PREPARE off (a pooler that cannot
    keep prepared statements): a plain one."""
    if not settings.WARDEN_GATE_PREPARE:
        return connection.cursor()
    connection.close_if_health_check_failed()
    connection.ensure_connection()
    with connection.wrap_database_errors:
        raw = connection.connection
        if raw.prepare_threshold is None:  # Django turns preparing off; its client-side cursors never prepare
            raw.prepare_threshold = NEVER
        return connection._prepare_cursor(_PreparedCursor(raw))


@functools.lru_cache(maxsize=1)
def _read_sql() -> str:
    from .gate import _snapshot_sql

    snapshot = _snapshot_sql().replace("%s", "{}").format("%(month)s", "%(key)s", "%(agent)s")
    head, tail = snapshot.split("\nFROM agents_agent a ", 1)
    return f"{head},{READ_EXTRA}FROM agents_agent a {tail}"


@dataclass
class Facts:
    me: object  # gate.Snapshot
    price: tuple | None
    sinks: dict
    reads: list  # [(action id, view, level)], most sensitive first
    tools: list  # [(action id, tool, level)] by tool


def read(*, agent_id, key_id, action: str, resource: str, host: str | None, now: dt.datetime,
         want_flow: bool) -> Facts:
    """Everything `gate._judge_fast` needs, in one round trip."""
    from agents.models import Agent

    from .gate import _snapshot_of

    kind = billing._price_kind(action)
    priced = billing._priced_name(action, resource)
    since, asked_since = windows(now)
    sink_kind, sink = sink_name(action=action, resource=resource, host=host) if action in SINK_KIND else ("", "")
    with prepared_cursor() as cursor:
        cursor.execute(_read_sql(), {
            "month": billing.period_start(now), "key": key_id, "agent": agent_id, "now": now,
            "price_kind": kind, "price_name": priced,
            "price_names": [priced, billing.DEFAULT_ENDPOINT] if kind == "endpoint" else [priced],
            "sink_kind": sink_kind, "sink_name": sink, "flow": want_flow, "since": since,
            "asked_since": asked_since,
        })
        row = cursor.fetchone()
    if row is None:
        raise Agent.DoesNotExist
    *snapshot, price, sinks, reads, tools = row
    return Facts(me=_snapshot_of(snapshot, key_id=key_id, agent_id=agent_id),
                 price=tuple(price) if price is not None else None, sinks=sinks or {},
                 reads=[tuple(item) for item in reads or []], tools=[tuple(item) for item in tools or []])


def commit(*, action: dict, event: dict, agent, key_id, month: dt.date, budgets: int, reserve: int,
           touch: dt.datetime | None, check_identity: bool) -> int | None:
    """Write the judgement in one call; the audit event's id, or None when what the read saw has changed
    (nothing is written then). The event is chained by the function, under the chain head's lock."""
    fields = audit_fields(chain=chain_of(agent), seq=0, prev_hash=GENESIS, **event)  # the link: the function's
    parts = canonical_parts(fields)
    if parts is None:
        return None
    try:
        action_json, event_json = orjson.dumps(action).decode(), orjson.dumps(fields).decode()
    except (orjson.JSONEncodeError, TypeError):
        return None  # not for this path (the slow path's own encoder decides)
    # In a caller's transaction, a savepoint: an idempotency key taken meanwhile (IntegrityError) must not
    # break the caller's transaction.
    savepoint = transaction.atomic() if connection.in_atomic_block else contextlib.nullcontext()
    with savepoint, prepared_cursor() as cursor:
        cursor.execute(
            "SELECT warden_gate_commit(%s::jsonb, %s::jsonb, %s::bytea, %s::bytea, %s::bytea, %s::bytea, "
            "%s::uuid, %s::bigint, %s::uuid, %s::date, %s::integer, %s::bigint, %s::timestamptz, %s::boolean)",
            [action_json, event_json, *parts, agent.pk, agent.team_id, key_id, month, budgets, reserve, touch,
             check_identity],
        )
        event_id = cursor.fetchone()[0]
    if event_id is None:  # WG001 inside: what the read saw no longer holds; nothing was written
        return None
    publish_on_commit(event_id)
    return event_id
