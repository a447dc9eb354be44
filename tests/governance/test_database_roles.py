"""Least privilege in PostgreSQL: the application role appends audit events and can do nothing else to them."""

from __future__ import annotations

import datetime as dt

import psycopg
import pytest
from django.db import connection
from django.utils import timezone

from audit.models import ArchiveSegment, AuditEvent
from audit.verify import archive_signature, verify


@pytest.fixture
def app_connection(app_role):
    """A connection of its own, logged in with the application role's password (as web, worker and beat are)."""
    role, password = app_role
    params = {key: value for key, value in connection.get_connection_params().items()
              if key not in ("context", "cursor_factory", "user", "password")}
    conn = psycopg.connect(**params, user=role, password=password, autocommit=True)
    yield conn
    conn.close()


@pytest.fixture
def committed_history(transactional_db, make_agent, personas):
    from agents import services

    agent = make_agent("first")
    services.agent_suspend(agent=agent, by=personas["security"], reason="drill")
    return agent


def refused(conn, statement, params=(), match="permission denied|must be owner"):
    with pytest.raises(psycopg.Error, match=match):
        conn.execute(statement, params)


def test_the_suite_itself_runs_as_the_application_role(db, app_role):
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user")
        assert cursor.fetchone() == (app_role[0], False)


def test_the_application_role_cannot_touch_history(committed_history, app_connection):
    before = AuditEvent.objects.count()
    assert app_connection.execute("SELECT count(*) FROM audit_auditevent").fetchone()[0] == before
    for statement in (
        "UPDATE audit_auditevent SET outcome = 'allowed'",
        "DELETE FROM audit_auditevent",
        "TRUNCATE audit_auditevent",
        "UPDATE audit_checkpoint SET events = 0",
        "DELETE FROM audit_archivesegment",
        "DELETE FROM audit_chainhead",
        "ALTER TABLE audit_auditevent DISABLE TRIGGER USER",
        "ALTER TABLE audit_auditevent DISABLE TRIGGER ALL",
        "DROP TRIGGER audit_event_no_update_delete ON audit_auditevent",
        "CREATE OR REPLACE FUNCTION warden_audit_event_guard() RETURNS trigger AS $$ BEGIN RETURN OLD; END $$ LANGUAGE plpgsql",
        "SET session_replication_role = replica",
        "CREATE TABLE mine (id int)",
        "SELECT value FROM warden_private.setting",
        "DELETE FROM django_migrations",
    ):
        refused(app_connection, statement)
    # The trigger's escape hatch is no way round the privilege either.
    with app_connection.transaction():
        app_connection.execute("SELECT set_config('warden.audit_archive_segment', '1', true)")
        refused(app_connection, "DELETE FROM audit_auditevent")
    assert AuditEvent.objects.count() == before
    assert verify().ok


def test_the_application_role_does_its_job(committed_history, app_connection):
    """Appending is what it may do: events, heads, checkpoints (the suite exercises the rest)."""
    from audit.services import checkpoint_create

    app_connection.execute("SELECT 1 FROM audit_chainhead FOR UPDATE")
    checkpoint_create()
    app_connection.execute("INSERT INTO audit_checkpoint (created_at, heads, events, signature) VALUES (now(), '{}', 0, 'x')")


def _segment(conn, *, chains, cutoff, events, sign=True) -> int:
    """Insert an archive segment as the application role, signed with the real key unless told otherwise."""
    segment = ArchiveSegment(created_at=timezone.now(), cutoff=cutoff, file_name=f"forged-{cutoff:%s%f}.jsonl.gz",
                             sha256="0" * 64, events=events, chains=chains)
    segment.signature = archive_signature(segment) if sign else "f" * 64
    return conn.execute(
        "INSERT INTO audit_archivesegment (created_at, cutoff, file_name, sha256, events, chains, signature) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id",
        [segment.created_at, segment.cutoff, segment.file_name, segment.sha256, segment.events,
         psycopg.types.json.Jsonb(segment.chains), segment.signature],
    ).fetchone()[0]


def test_the_archive_path_deletes_nothing_an_application_could_forge(committed_history, app_connection):
    chain = f"agent:{committed_history.pk}"
    events = list(AuditEvent.objects.filter(chain=chain).order_by("seq"))
    whole = {chain: [1, events[-1].seq, events[0].prev_hash, events[-1].hash]}
    now = timezone.now()
    attempts = [
        # a forged signature
        (dict(chains=whole, cutoff=now - dt.timedelta(days=500), events=len(events), sign=False), "signature"),
        # signed (the application knows the key), but a cutoff of today: recent events stay
        (dict(chains=whole, cutoff=now + dt.timedelta(days=1), events=len(events)), "is not at least 400 days ago"),
        # signed, an old cutoff, but the events are recent
        (dict(chains=whole, cutoff=now - dt.timedelta(days=500), events=len(events)), "not a complete run older"),
    ]
    _all_refused(app_connection, attempts)
    assert AuditEvent.objects.filter(chain=chain).count() == len(events)
    assert verify().ok


def _all_refused(conn, attempts) -> None:
    for kwargs, refusal in attempts:
        with conn.transaction():
            segment_id = _segment(conn, **kwargs)
            refused(conn, "SELECT warden_audit_archive_delete(%s)", [segment_id], match=refusal)
            raise psycopg.Rollback()


def test_old_events_leave_only_as_the_signed_manifest_says(transactional_db, make_agent, personas, monkeypatch,
                                                           app_connection):
    import types

    from agents import services

    long_ago = timezone.now() - dt.timedelta(days=500)
    monkeypatch.setattr("audit.services.timezone", types.SimpleNamespace(now=lambda: long_ago))
    agent = make_agent("old-timer")
    services.agent_suspend(agent=agent, by=personas["security"], reason="drill")
    services.agent_resume(agent=agent, by=personas["admin"])
    monkeypatch.undo()
    chain = f"agent:{agent.pk}"
    events = list(AuditEvent.objects.filter(chain=chain).order_by("seq"))
    cutoff = timezone.now() - dt.timedelta(days=450)
    first, last = events[0], events[-1]
    _all_refused(app_connection, [
        # the ends do not carry the hashes the manifest names
        (dict(chains={chain: [1, last.seq, first.prev_hash, "0" * 64]}, cutoff=cutoff, events=len(events)), "hashes"),
        # not the oldest run of the chain: a hole would be cut in the middle
        (dict(chains={chain: [2, last.seq, events[1].prev_hash, last.hash]}, cutoff=cutoff, events=len(events) - 1),
         "has events before seq 2"),
        # more events named than the range holds
        (dict(chains={chain: [1, last.seq, first.prev_hash, last.hash]}, cutoff=cutoff, events=len(events) + 1),
         "events deleted but the segment names"),
    ])
    assert AuditEvent.objects.filter(chain=chain).count() == len(events)
    # The one shape that passes: what audit_archive() itself writes.
    with app_connection.transaction():
        segment_id = _segment(app_connection, chains={chain: [1, last.seq, first.prev_hash, last.hash]},
                              cutoff=cutoff, events=len(events))
        deleted = app_connection.execute("SELECT warden_audit_archive_delete(%s)", [segment_id]).fetchone()[0]
    assert deleted == len(events) and not AuditEvent.objects.filter(chain=chain).exists()
