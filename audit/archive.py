"""Retention: events older than WARDEN_AUDIT_RETENTION_DAYS move to compressed JSON Lines.

The order of work makes sure nothing is ever dropped silently:

1. choose, per chain, the run of its oldest events that are older than the
   cutoff (always a prefix, so what stays in the table still starts where the
   archive ends);
2. write them to `<dir>/<name>.jsonl.gz.partial`, checking every link on the
   way (a broken chain is not archived: the run stops and says where), fsync,
   rename;
3. read the file back and check it exactly as `audit_verify --archives` will;
4. in one transaction: store the signed segment (what went where, with the
   hashes at both ends of every chain), have the database owner's
   warden_audit_archive_delete() check it and delete exactly those events
   (the application's role cannot delete audit events at all), and record an
   `audit.archived` event.

A crash before step 4 leaves a file without a segment, which is harmless (the
next run writes a new one); step 4 is all or nothing.
"""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.utils import timezone
import orjson

from .models import GENESIS, ArchiveSegment
from .services import JSON_FIELDS, audit_record
from .verify import COLUMNS, archive_anchors, archive_signature, check_chain, stream_chain, verify_archive_file

LOCK = "warden.audit_archive"


class ArchiveRefused(Exception):
    """The events due for archiving do not verify; they stay where they are."""


@dataclass
class Plan:
    cutoff: dt.datetime
    ranges: dict[str, tuple[int, int, int, str]]  # chain: (first seq, last seq, previous seq, previous hash)

    @property
    def events(self) -> int:
        return sum(last - first + 1 for first, last, _, _ in self.ranges.values())


def archive_plan(*, now: dt.datetime | None = None, retention_days: int | None = None) -> Plan | None:
    """What a run would archive now: per chain, its oldest events older than the cutoff."""
    days = settings.WARDEN_AUDIT_RETENTION_DAYS if retention_days is None else retention_days
    if days <= 0:
        return None
    cutoff = (now or timezone.now()) - dt.timedelta(days=days)
    anchors = archive_anchors()
    ranges = {}
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT chain, min(seq), max(seq), count(*) FROM audit_auditevent WHERE occurred_at < %s GROUP BY chain",
            [cutoff],
        )
        for chain, first, last, count in cursor.fetchall():
            if count != last - first + 1:  # a newer event sits inside the run (clock step): stop before it
                cursor.execute(
                    "SELECT min(seq) FROM audit_auditevent WHERE chain = %s AND seq BETWEEN %s AND %s AND occurred_at >= %s",
                    [chain, first, last, cutoff],
                )
                last = cursor.fetchone()[0] - 1
            previous_seq, previous_hash = anchors.get(chain, (0, GENESIS))
            if last >= first:
                ranges[chain] = (first, last, previous_seq, previous_hash)
    return Plan(cutoff, ranges)


def audit_archive(*, now: dt.datetime | None = None, retention_days: int | None = None,
                  directory: Path | None = None, actor=None) -> ArchiveSegment | None:
    """Archive what the retention says is due; None when nothing is (or another run holds the lock)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(hashtext(%s))", [LOCK])
        if not cursor.fetchone()[0]:
            return None
    try:
        plan = archive_plan(now=now, retention_days=retention_days)
        if plan is None or not plan.ranges:
            return None
        directory = Path(directory or settings.WARDEN_AUDIT_ARCHIVE_DIR)
        directory.mkdir(parents=True, exist_ok=True)
        created_at = now or timezone.now()
        name = f"audit-{plan.cutoff:%Y%m%d}-{created_at:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}.jsonl.gz"
        chains, digest = _write(plan, directory / name)
        segment = ArchiveSegment(created_at=created_at, cutoff=plan.cutoff, file_name=name, sha256=digest,
                                 events=plan.events, chains=chains)
        problems = verify_archive_file(segment, directory / name)
        if problems:
            raise ArchiveRefused(f"the archive file did not read back intact: {problems[0]}")
        return _commit(segment, actor)
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(hashtext(%s))", [LOCK])


def _write(plan: Plan, path: Path) -> tuple[dict, str]:
    """Stream the planned events into the file, checking each chain; returns (manifest chains, file SHA-256).

    The digest is taken of the bytes as they are written; reading the file back
    (verify_archive_file) then shows the disk holds those bytes.
    """
    partial = path.with_name(path.name + ".partial")
    chains = {}
    try:
        with partial.open("wb") as raw:
            hashed = _Hashing(raw)
            with gzip.GzipFile(fileobj=hashed, mode="wb", compresslevel=6, mtime=0) as out:
                for chain in sorted(plan.ranges):
                    first, last, previous_seq, previous_hash = plan.ranges[chain]
                    events = _written(out, stream_chain(connection.connection, chain, first, last))
                    checked, end, problems = check_chain(events, chain, (previous_seq, previous_hash))
                    if problems:
                        raise ArchiveRefused(f"not archived, the chain is broken: {problems[0]['problem']}")
                    if checked != last - first + 1 or end[0] != last:
                        raise ArchiveRefused(f"{chain}: expected seq {first}..{last}, read {checked} events")
                    chains[chain] = [first, last, previous_hash, end[1]]
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(partial, path)
        _fsync_dir(path.parent)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return chains, hashed.digest.hexdigest()


class _Hashing:
    """A file object that hashes what goes through it to the file below."""

    def __init__(self, raw):
        self.raw, self.digest = raw, hashlib.sha256()

    def write(self, data) -> int:
        self.digest.update(data)
        return self.raw.write(data)

    def flush(self) -> None:
        self.raw.flush()


def _written(out, rows):
    """Write each event as one JSON line and pass it on (as a dict) to the chain check."""
    for row in rows:
        event = dict(zip(COLUMNS, row))
        for name in JSON_FIELDS:
            event[name] = orjson.loads(event[name])
        out.write(orjson.dumps(event) + b"\n")  # times and ids are already the text the hash covers
        yield event


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@transaction.atomic
def _commit(segment: ArchiveSegment, actor) -> ArchiveSegment:
    """Store the signed segment, then let the owner's function check it and delete what it covers.

    The application's database role cannot delete audit events itself;
    warden_audit_archive_delete() (migration audit 0007) checks the signature,
    the cutoff against the retention floor, and that every range is the oldest
    complete run of its chain with the hashes the manifest names.
    """
    segment.signature = archive_signature(segment)
    segment.save()
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SELECT warden_audit_archive_delete(%s)", [segment.pk])
            deleted = cursor.fetchone()[0]
    except DatabaseError as error:
        raise ArchiveRefused(str(error).splitlines()[0]) from None
    if deleted != segment.events:
        raise ArchiveRefused(f"deleted {deleted} events but archived {segment.events}; nothing changed")
    audit_record(action="audit.archived", actor=actor, resource=segment.file_name, payload={
        "segment": segment.pk, "events": segment.events, "chains": len(segment.chains),
        "cutoff": segment.cutoff.isoformat(), "sha256": segment.sha256,
    })
    return segment
