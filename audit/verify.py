"""Check the audit hash chains, the archive manifests and the latest signed checkpoint.

Every event's hash must match its content and the hash before it, sequence
numbers must run 1, 2, 3 ... per chain (a chain whose start was archived
continues from the archive's last link), each chain's stored head must be its
last event, archive segments must be signed and join up, and the newest
checkpoint (signed) must still be found in the chains: so a changed, deleted,
reordered or cut-off event is reported, with the first broken link.

Everything is read in one snapshot (REPEATABLE READ), so events appended while
the check runs are neither missed halfway nor reported as breaks. Chains are
independent, so `workers` > 1 checks them in parallel processes that share the
snapshot (pg_export_snapshot); `manage.py audit_verify --workers N` uses that.
"""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import hmac
import itertools
import json
import multiprocessing
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings
from django.db import connection, transaction

import orjson
import psycopg
from psycopg import sql

from .models import GENESIS, ArchiveSegment, Checkpoint
from .services import HASHED_FIELDS, JSON_FIELDS, canonical

COLUMNS = ("id", *HASHED_FIELDS, "hash")
# Every chain with events, by skipping through the (chain, seq) index: one probe per chain.
CHAINS_WITH_EVENTS = """
    WITH RECURSIVE c AS (
        (SELECT chain FROM audit_auditevent ORDER BY chain LIMIT 1)
        UNION ALL
        SELECT (SELECT e.chain FROM audit_auditevent e WHERE e.chain > c.chain ORDER BY e.chain LIMIT 1)
        FROM c WHERE c.chain IS NOT NULL
    )
    SELECT chain FROM c WHERE chain IS NOT NULL
"""
MAX_PROBLEMS_PER_CHAIN = 100


@dataclass
class Result:
    ok: bool = True
    events_checked: int = 0
    chains: int = 0
    archived_events: int = 0
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


def _mac(body: dict) -> str:
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hmac.new(signing_key(), text.encode(), hashlib.sha256).hexdigest()


def archive_key() -> str:
    """The key archive segments are signed with: derived from the signing key, kept by the database owner too.

    `manage.py setup_database` stores it where only the owner's
    warden_audit_archive_delete() can read it (migration audit 0007), so the
    database checks a segment's signature before it deletes a single event.
    """
    return hmac.new(signing_key(), b"warden.audit.archive", hashlib.sha256).hexdigest()


def sign_heads(created_at: str, heads: dict, events: int) -> str:
    """HMAC-SHA256 of a checkpoint (the body checkpoints have always been signed over)."""
    return _mac({"created_at": created_at, "heads": heads, "events": events})


def _utc_text(moment: dt.datetime) -> str:
    return moment.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def archive_manifest(segment) -> str:
    """The text a segment's signature covers: exactly what SQL warden_archive_manifest() builds."""
    lines = ["warden-archive-v2", segment.file_name, segment.sha256, str(segment.events),
             _utc_text(segment.created_at), _utc_text(segment.cutoff)]
    lines += [" ".join(str(part) for part in (chain, *segment.chains[chain])) for chain in sorted(segment.chains)]
    return "\n".join(lines)


def archive_signature(segment) -> str:
    return hmac.new(archive_key().encode(), archive_manifest(segment).encode(), hashlib.sha256).hexdigest()


def _signature_v1(segment) -> str:
    """How segments written before migration audit 0007 were signed (the signing key over JSON)."""
    utc = dt.timezone.utc
    return _mac({"kind": "archive", "created_at": segment.created_at.astimezone(utc).isoformat(),
                 "cutoff": segment.cutoff.astimezone(utc).isoformat(), "file_name": segment.file_name,
                 "sha256": segment.sha256, "events": segment.events, "chains": segment.chains})


def segment_signed(segment) -> bool:
    """The segment's signature checks out, in the current form or, for older segments, the first one."""
    return any(hmac.compare_digest(signature, segment.signature)
               for signature in (archive_signature(segment), _signature_v1(segment)))


_JSON_AT = [HASHED_FIELDS.index(name) for name in JSON_FIELDS]
_SORT_KEYS = orjson.OPT_SORT_KEYS


def _content_hash(event) -> str:
    """canonical()'s digest; for a stream_chain row (times and ids already text) without the dict detour."""
    if isinstance(event, dict):
        for name in JSON_FIELDS:  # Django's connection hands jsonb back as text
            if isinstance(event[name], str):
                event[name] = orjson.loads(event[name])
        return hashlib.sha256(canonical(event)).hexdigest()
    values = list(event[1:-1])
    for at in _JSON_AT:
        values[at] = orjson.loads(values[at])
    return hashlib.sha256(orjson.dumps(dict(zip(HASHED_FIELDS, values)), option=_SORT_KEYS)).hexdigest()


def check_chain(events, chain: str, start: tuple[int, str] = (0, GENESIS)):
    """Walk one chain's events (dicts, or COLUMNS tuples from stream_chain; in seq order) from `start`.

    Returns (events checked, (last seq, last hash), problems as dicts).
    """
    expected_seq, previous = start[0] + 1, start[1]
    problems: list[dict] = []
    checked = 0
    for event in events:
        if isinstance(event, dict):
            event_id, seq, prev_hash, digest = event.get("id"), event["seq"], event["prev_hash"], event["hash"]
        else:
            event_id, seq, prev_hash, digest = event[0], event[2], event[3], event[-1]
        checked += 1
        problem = None
        if seq != expected_seq:
            problem = f"{chain}: expected seq {expected_seq}, found {seq} (an event was deleted or reordered)"
        elif prev_hash != previous:
            problem = f"{chain} seq {seq}: does not link to the event before it"
        elif _content_hash(event) != digest:
            problem = f"{chain} seq {seq}: content does not match its hash (changed)"
        if problem and len(problems) < MAX_PROBLEMS_PER_CHAIN:
            problems.append({"chain": chain, "seq": seq, "event_id": event_id, "problem": problem})
        expected_seq, previous = seq + 1, digest
    return checked, (expected_seq - 1, previous), problems


# Times come as the exact text the hash covers (UTC, microseconds), ids and JSON as
# text: psycopg loads text columns ~3x faster than timestamptz/uuid/jsonb ones.
_READ_COLUMNS = {
    "occurred_at": """to_char(occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"')""",
    "agent_id": "agent_id::text",
    **{name: f"{name}::text" for name in JSON_FIELDS},
}
_READ_PAGE = (f"SELECT {', '.join(_READ_COLUMNS.get(name, name) for name in COLUMNS)} FROM audit_auditevent "
              "WHERE chain = %s AND seq > %s AND seq <= %s ORDER BY seq LIMIT %s")


def stream_chain(conn, chain: str, first: int = 1, last: int = 2**62, page: int = 10_000):
    """One chain's events from seq `first` to `last`, in order, as COLUMNS tuples.

    Keyset pages on the (chain, seq) index with a plain cursor: a server-side
    cursor costs three round trips a chain, and most chains are short.
    """
    after = first - 1
    with conn.cursor() as cursor:
        while True:
            cursor.execute(_READ_PAGE, [chain, after, last, page])
            rows = cursor.fetchall()
            yield from rows
            if len(rows) < page:
                return
            after = rows[-1][2]  # seq


def _check_in_connection(conn, chain: str, start) -> tuple:
    return (chain, *check_chain(stream_chain(conn, chain), chain, start))


# --- parallel workers (forked; each has its own connection in the shared snapshot) ---


def raw_connection_params() -> dict:
    """What psycopg.connect needs to reach Django's database, without Django's adapters."""
    params = connection.get_connection_params()
    return {key: value for key, value in params.items() if key not in ("context", "cursor_factory")}

_worker_conn = None


def _worker_init(params: dict, snapshot: str) -> None:
    global _worker_conn
    _worker_conn = psycopg.connect(**params)
    _worker_conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
    _worker_conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))


def _worker_check(job: tuple[str, tuple[int, str]]) -> tuple:
    chain, start = job
    return _check_in_connection(_worker_conn, chain, start)


def archive_anchors(result: Result | None = None) -> dict[str, tuple[int, str]]:
    """Where each chain continues after its archived part (last seq, last hash); checks the manifests join up."""
    result = result if result is not None else Result()
    anchors: dict[str, tuple[int, str]] = {}
    for segment in ArchiveSegment.objects.order_by("created_at", "id"):
        result.archived_events += segment.events
        if not segment_signed(segment):
            result.fail(chain=None, seq=None, event_id=None,
                        problem=f"archive segment {segment.pk} ({segment.file_name}): signature does not match")
            continue
        for chain, (first_seq, last_seq, prev_hash, last_hash) in segment.chains.items():
            before = anchors.get(chain, (0, GENESIS))
            if first_seq != before[0] + 1 or prev_hash != before[1]:
                result.fail(chain=chain, seq=first_seq, event_id=None,
                            problem=f"{chain}: archive segment {segment.pk} starts at seq {first_seq} but the chain "
                                    f"stood at seq {before[0]} (archives do not join up)")
            anchors[chain] = (last_seq, last_hash)
    return anchors


def verify(*, workers: int = 1, archives: bool = False) -> Result:
    """Check everything; `archives` also reads each archive file and checks the events in it."""
    with transaction.atomic():
        outermost = len(connection.atomic_blocks) == 1
        with connection.cursor() as cursor:
            if outermost:  # take one snapshot for every read below (and for the workers)
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            cursor.execute("SELECT chain, seq, hash FROM audit_chainhead")
            stored_heads = {chain: (seq, digest) for chain, seq, digest in cursor.fetchall()}
            cursor.execute(CHAINS_WITH_EVENTS)
            chains = [row[0] for row in cursor.fetchall()]
        result = Result()
        anchors = archive_anchors(result)
        jobs = [(chain, anchors.get(chain, (0, GENESIS))) for chain in chains]
        if workers > 1 and len(jobs) > 1 and outermost:  # inside a caller's transaction: in process
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_export_snapshot()")
                snapshot = cursor.fetchone()[0]
            context = multiprocessing.get_context("fork")
            with context.Pool(workers, _worker_init, (raw_connection_params(), snapshot)) as pool:
                parts = list(pool.imap_unordered(_worker_check, jobs))
        else:
            parts = [_check_in_connection(connection.connection, chain, start) for chain, start in jobs]
        heads = dict(anchors)  # a wholly archived chain ends where its archive does
        problems = []
        for chain, checked, end, chain_problems in sorted(parts):
            result.events_checked += checked
            result.chains += 1
            heads[chain] = end
            problems.extend(chain_problems)
        for problem in problems:
            result.fail(**problem)
        for chain, (seq, digest) in sorted(stored_heads.items()):
            if heads.get(chain) != (seq, digest):
                found = heads.get(chain, (0, GENESIS))[0]
                result.fail(chain=chain, seq=seq, event_id=None,
                            problem=f"{chain}: the head says seq {seq} but the chain ends at seq {found} (events cut off)")
        _check_checkpoint(result, anchors)
    if archives:
        verify_archive_files(result)
    return result


def _check_checkpoint(result: Result, anchors: dict) -> None:
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
            found = row[0] if row else None
            archived_to, archived_hash = anchors.get(chain, (0, GENESIS))
            if found is None and seq < archived_to:
                continue  # archived since, inside a segment: the file's own check covers it
            if found is None and seq == archived_to:
                found = archived_hash
            if found != digest:
                result.fail(chain=chain, seq=seq, event_id=None,
                            problem=f"{chain}: checkpoint {checkpoint.pk} saw seq {seq}, which is now "
                                    + ("missing (the chain was cut)" if found is None else "different"))


def read_archive(path: Path):
    """The events of one archive file, in file order (by chain, then seq); times stay as written."""
    with gzip.open(path, "rb") as lines:
        for line in lines:
            yield orjson.loads(line)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as raw:
        for block in iter(lambda: raw.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_archive_file(segment: ArchiveSegment, path: Path | None = None) -> list[str]:
    """Problems with one archive file: missing, altered, or events that do not chain."""
    path = path or Path(settings.WARDEN_AUDIT_ARCHIVE_DIR) / segment.file_name
    if not path.exists():
        return [f"archive {segment.file_name}: file not found in {path.parent}"]
    if file_sha256(path) != segment.sha256:
        return [f"archive {segment.file_name}: file does not match its recorded SHA-256 (altered or replaced)"]
    problems, total, seen = [], 0, set()
    for chain, events in itertools.groupby(read_archive(path), key=lambda event: event["chain"]):
        if chain not in segment.chains or chain in seen:
            problems.append(f"archive {segment.file_name}: events of {chain} the manifest does not list there")
            continue
        seen.add(chain)
        first_seq, last_seq, prev_hash, last_hash = segment.chains[chain]
        checked, end, chain_problems = check_chain(events, chain, (first_seq - 1, prev_hash))
        total += checked
        problems += [f"archive {segment.file_name}: {p['problem']}" for p in chain_problems]
        if end != (last_seq, last_hash):
            problems.append(f"archive {segment.file_name}: {chain} ends at seq {end[0]}, the manifest says {last_seq}")
    for chain in set(segment.chains) - seen:
        problems.append(f"archive {segment.file_name}: no events of {chain}, which the manifest lists")
    if total != segment.events:
        problems.append(f"archive {segment.file_name}: {total} events, the manifest says {segment.events}")
    return problems


def verify_archive_files(result: Result) -> None:
    for segment in ArchiveSegment.objects.order_by("created_at", "id"):
        for problem in verify_archive_file(segment):
            result.fail(chain=None, seq=None, event_id=None, problem=problem)
