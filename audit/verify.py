"""Check the audit hash chains and the latest signed checkpoint.

Every event's hash must match its content and the hash before it, sequence
numbers must run 1, 2, 3 ... per chain, each chain's stored head must be its
last event, and the newest checkpoint (signed) must still be found in the
chains: so a changed, deleted, reordered or cut-off event is reported, with
the first broken link.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass, field

from django.conf import settings
from django.db import connection, transaction

from .models import GENESIS, Checkpoint
from .services import HASHED_FIELDS, JSON_FIELDS, canonical

COLUMNS = ("id", *HASHED_FIELDS, "hash")


@dataclass
class Result:
    ok: bool = True
    events_checked: int = 0
    chains: int = 0
    first_break: dict | None = None
    checkpoint: dict | None = None
    problems: list[str] = field(default_factory=list)

    def fail(self, **where) -> None:
        if self.first_break is None:
            self.first_break = where
        self.ok = False
        self.problems.append(where["problem"])


def signing_key() -> bytes:
    return (settings.WARDEN_AUDIT_SIGNING_KEY or settings.SECRET_KEY).encode()


def sign_heads(created_at: str, heads: dict, events: int) -> str:
    body = json.dumps({"created_at": created_at, "heads": heads, "events": events}, sort_keys=True, separators=(",", ":"))
    return hmac.new(signing_key(), body.encode(), hashlib.sha256).hexdigest()


@transaction.atomic  # one consistent snapshot; server-side cursors live in a transaction
def verify(*, batch: int = 5000) -> Result:
    result = Result()
    heads: dict[str, tuple[int, str]] = {}
    with connection.cursor() as cursor:
        cursor.execute("SELECT chain, seq, hash FROM audit_chainhead")
        stored_heads = {chain: (seq, digest) for chain, seq, digest in cursor.fetchall()}
    current_chain, expected_seq, previous = None, 1, GENESIS
    # A named (server-side) cursor streams millions of rows without loading them all.
    with connection.connection.cursor(name="warden_audit_verify") as cursor:
        cursor.itersize = batch
        cursor.execute(f"SELECT {', '.join(COLUMNS)} FROM audit_auditevent ORDER BY chain, seq")
        for row in cursor:
            event = dict(zip(COLUMNS, row))
            for name in JSON_FIELDS:  # Django's connection hands jsonb back as text
                if isinstance(event[name], str):
                    event[name] = json.loads(event[name])
            if event["chain"] != current_chain:
                if current_chain is not None:
                    heads[current_chain] = (expected_seq - 1, previous)
                current_chain, expected_seq, previous = event["chain"], 1, GENESIS
                result.chains += 1
            result.events_checked += 1
            where = {"chain": event["chain"], "seq": event["seq"], "event_id": event["id"]}
            if event["seq"] != expected_seq:
                result.fail(**where, problem=f"{event['chain']}: expected seq {expected_seq}, found {event['seq']} "
                                             "(an event was deleted or reordered)")
            elif event["prev_hash"] != previous:
                result.fail(**where, problem=f"{event['chain']} seq {event['seq']}: does not link to the event before it")
            elif hashlib.sha256(canonical(event)).hexdigest() != event["hash"]:
                result.fail(**where, problem=f"{event['chain']} seq {event['seq']}: content does not match its hash (changed)")
            expected_seq, previous = event["seq"] + 1, event["hash"]
        if current_chain is not None:
            heads[current_chain] = (expected_seq - 1, previous)
    for chain, (seq, digest) in stored_heads.items():
        if heads.get(chain) != (seq, digest):
            found = heads.get(chain, (0, GENESIS))[0]
            result.fail(chain=chain, seq=seq, event_id=None,
                        problem=f"{chain}: the head says seq {seq} but the chain ends at seq {found} (events cut off)")
    _check_checkpoint(result, heads)
    return result


def _check_checkpoint(result: Result, heads: dict) -> None:
    checkpoint = Checkpoint.objects.order_by("-created_at").first()
    if checkpoint is None:
        return
    result.checkpoint = {"id": checkpoint.pk, "created_at": checkpoint.created_at.isoformat(), "chains": len(checkpoint.heads)}
    expected = sign_heads(checkpoint.created_at.isoformat(), checkpoint.heads, checkpoint.events)
    if not hmac.compare_digest(expected, checkpoint.signature):
        result.fail(chain=None, seq=None, event_id=None, problem=f"checkpoint {checkpoint.pk}: signature does not match")
        return
    with connection.cursor() as cursor:
        for chain, (seq, digest) in checkpoint.heads.items():
            cursor.execute("SELECT hash FROM audit_auditevent WHERE chain = %s AND seq = %s", [chain, seq])
            row = cursor.fetchone()
            if row is None or row[0] != digest:
                result.fail(chain=chain, seq=seq, event_id=None,
                            problem=f"{chain}: checkpoint {checkpoint.pk} saw seq {seq}, which is now "
                                    + ("missing (the chain was cut)" if row is None else "different"))
