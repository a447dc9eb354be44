"""`audit_record(...)`: the one way anything is written to the audit log.

Call it inside the transaction of the change it records: the event commits or
rolls back with that change. Each event extends a hash chain (one per agent,
one "global" for everything else): its hash covers its content and the hash
before it, so a changed, removed or reordered event breaks the chain.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass

from django.db import connection, transaction
from django.utils import timezone
import orjson
from psycopg.types.json import Jsonb

from governance.context import current_correlation_id
from governance.payloads import canonical_form, clean_text
from governance.sql import as_saved
from governance.telemetry import current_trace_id

from .live import publish_on_commit
from .models import GENESIS, AuditEvent
from .redaction import redact, redact_text


@dataclass(frozen=True)
class Actor:
    type: str  # agent | user | system
    id: str = ""
    name: str = ""

    @classmethod
    def of(cls, who) -> "Actor":
        """An Actor for a user, an agent, or None (the system)."""
        if who is None:
            return SYSTEM
        if isinstance(who, Actor):
            return who
        agent = getattr(who, "agent", None)  # an authenticated agent principal
        if agent is not None:
            who = agent
        if who.__class__.__name__ == "Agent":
            return cls("agent", str(who.pk), who.name)
        return cls("user", str(who.pk), who.get_username())


SYSTEM = Actor("system", "", "system")


HASHED_FIELDS = (
    "chain", "seq", "prev_hash", "occurred_at", "actor_type", "actor_id", "actor_name", "agent_id",
    "agent_name", "team", "delegation_chain", "action", "resource", "outcome", "reasons", "policy_ids",
    "policy_version", "cost_micros", "data_classification", "correlation_id", "trace_id", "payload",
)


def canonical(fields: dict) -> bytes:
    """The exact bytes an event's hash covers (the verifier and archives use this too).

    Compact JSON with sorted keys, UTF-8, times in UTC with microseconds. orjson
    writes it ~5x faster than the json module (verification reads millions of
    events); for the values stored here the bytes are the same as
    json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    except that floats are written in their shortest form (1e-05 as 0.00001).
    """
    agent_id, occurred_at = fields["agent_id"], fields["occurred_at"]
    body = {name: fields[name] for name in HASHED_FIELDS}
    if not isinstance(occurred_at, str):  # readers may hand over the text already (audit.verify.stream_chain)
        body["occurred_at"] = occurred_at.astimezone(dt.timezone.utc).isoformat(timespec="microseconds")
    body["agent_id"] = None if agent_id is None else str(agent_id)
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


def canonical_parts(fields: dict) -> tuple[bytes, bytes, bytes, bytes] | None:
    """`canonical(fields)` cut around the three values of the link: head + occurred_at's text + after_time +
    prev_hash + after_prev + str(seq) + tail are the canonical bytes. The gate's hot path sends these and lets
    PostgreSQL fill in the link it takes under the chain head's lock (governance/hotpath.py);
    tests/audit/test_canonical_form.py holds the pieces to `canonical`. None if a mark is not where it must
    be (then the slow path writes the event)."""
    # Marks: a NUL is never left in any other text (canonical_form), and after prev_hash the sorted keys hold
    # only strings (reasons, resource) before seq, in which a quote is always escaped.
    time_mark, prev_mark, seq_mark = b'"occurred_at":"\\u0000"', b'"prev_hash":"\\u0000"', b'"seq":0'
    text = canonical({**fields, "occurred_at": "\x00", "prev_hash": "\x00", "seq": 0})
    if text.count(time_mark) != 1 or text.count(prev_mark) != 1:
        return None
    head, rest = text.split(time_mark)
    after_time, rest = rest.split(prev_mark)
    if seq_mark not in rest:
        return None
    after_prev, tail = rest.split(seq_mark, 1)
    return (head + b'"occurred_at":"', b'"' + after_time + b'"prev_hash":"', b'"' + after_prev + b'"seq":', tail)


def event_hash(fields: dict) -> str:
    return hashlib.sha256(canonical(fields)).hexdigest()


EVENT_COLUMNS = (*HASHED_FIELDS, "hash")
JSON_FIELDS = {"delegation_chain", "reasons", "policy_ids", "payload"}
# Text columns and their lengths: a longer value is cut (and marked) rather than refused.
TEXT_FIELDS = {name: AuditEvent._meta.get_field(name).max_length for name in (
    "actor_type", "actor_id", "actor_name", "agent_name", "team", "action", "resource", "outcome",
    "data_classification", "correlation_id", "trace_id")}
INSERT_EVENT = f"""
    WITH event AS (
        INSERT INTO audit_auditevent ({", ".join(EVENT_COLUMNS)})
        VALUES ({", ".join(["%s"] * len(EVENT_COLUMNS))}) RETURNING id
    ), head AS (
        UPDATE audit_chainhead SET hash = %s WHERE chain = %s
    )
    SELECT id FROM event
"""


def _claim_link(chain: str) -> tuple[int, str]:
    """Lock the chain's head row and take the next sequence number."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO audit_chainhead (chain, seq, hash) VALUES (%s, 1, %s)
            ON CONFLICT (chain) DO UPDATE SET seq = audit_chainhead.seq + 1
            RETURNING seq, hash
            """,
            [chain, GENESIS],
        )
        seq, prev_hash = cursor.fetchone()
    return seq, prev_hash


def audit_fields(
    *,
    chain: str,
    seq: int,
    prev_hash: str,
    action: str,
    actor=None,
    agent=None,
    resource: str = "",
    outcome: str = "ok",
    reasons=(),
    delegation_chain=(),
    policy_ids=(),
    policy_version: int | None = None,
    cost_micros: int | None = None,
    data_classification: str = "",
    payload: dict | None = None,
    team: str | None = None,
) -> dict:
    """The event at link `seq` of `chain` (after `prev_hash`), in the canonical form, with its hash.

    Pure: the gate's hot path (governance/hotpath.py) builds its event with this from the chain head it read,
    and writes it only if the head is still there (else it judges again the slow way, through audit_record).
    """
    who = Actor.of(actor)
    fields = {
        "chain": chain,
        "seq": seq,
        "prev_hash": prev_hash,
        "occurred_at": timezone.now(),
        "actor_type": who.type,
        "actor_id": who.id,
        "actor_name": who.name,
        "agent_id": agent.pk if agent is not None else None,
        "agent_name": agent.name if agent is not None else "",
        "team": (team or agent.team.name) if agent is not None else "",
        "delegation_chain": list(delegation_chain),
        "action": action,
        "resource": redact_text(resource),
        "outcome": outcome,
        "reasons": [redact_text(str(reason)) for reason in reasons],
        "policy_ids": list(policy_ids),
        "policy_version": policy_version,
        "cost_micros": cost_micros,
        "data_classification": data_classification,
        "correlation_id": current_correlation_id(),
        "trace_id": current_trace_id() or "",
        "payload": redact(payload or {}),
    }
    # The canonical form (governance.payloads): the hash covers exactly what PostgreSQL will give back,
    # whatever a caller handed over.
    for name, limit in TEXT_FIELDS.items():
        text = clean_text(str(fields[name]))
        fields[name] = text if len(text) <= limit else text[: limit - 1] + "…"
    for name in JSON_FIELDS:
        fields[name] = canonical_form(fields[name])
    fields["hash"] = event_hash(fields)
    return fields


def chain_of(agent) -> str:
    return f"agent:{agent.pk}" if agent is not None else "global"


@transaction.atomic(savepoint=False)  # rolls back with the change it records
def audit_record(*, agent=None, **event) -> AuditEvent:
    """Append one event (the keyword arguments of `audit_fields`, without the link) to its chain."""
    chain = chain_of(agent)
    seq, prev_hash = _claim_link(chain)
    fields = audit_fields(chain=chain, seq=seq, prev_hash=prev_hash, agent=agent, **event)
    # The event and the new chain head in one round trip.
    with connection.cursor() as cursor:
        cursor.execute(
            INSERT_EVENT,
            [*(Jsonb(fields[name]) if name in JSON_FIELDS else fields[name] for name in EVENT_COLUMNS), fields["hash"], chain],
        )
        event_id = cursor.fetchone()[0]
    publish_on_commit(event_id)  # also counts it (governance/metrics.py), once committed
    return as_saved(AuditEvent, {"id": event_id, **fields})


@transaction.atomic
def checkpoint_create():
    """Sign the current head of every chain (beat runs this every minute)."""
    from .models import Checkpoint
    from .verify import sign_heads

    with connection.cursor() as cursor:
        cursor.execute("SELECT chain, seq, hash FROM audit_chainhead ORDER BY chain")
        heads = {chain: [seq, digest] for chain, seq, digest in cursor.fetchall()}
    created_at = timezone.now()
    events = sum(seq for seq, _ in heads.values())
    signature = sign_heads(created_at.isoformat(), heads, events)
    return Checkpoint.objects.create(created_at=created_at, heads=heads, events=events, signature=signature)
