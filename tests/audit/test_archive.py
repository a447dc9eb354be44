"""Retention: old events move to compressed JSON Lines, chains intact, never silently dropped."""

import datetime as dt
import gzip
import json
import types

import pytest
from django.core.management import call_command
from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from audit.archive import ArchiveRefused, audit_archive
from audit.models import GENESIS, ArchiveSegment, AuditEvent
from audit.services import checkpoint_create
from audit.verify import verify
from tests.conftest import as_owner

from .test_chain import behind_the_triggers_back, chain_of, history  # noqa: F401 (fixture)

LONG_AGO = timezone.now() - dt.timedelta(days=500)


@pytest.fixture
def archive_dir(tmp_path, settings):
    settings.WARDEN_AUDIT_ARCHIVE_DIR = tmp_path
    return tmp_path


@pytest.fixture
def old_then_new(make_agent, personas, monkeypatch):
    """Events recorded 500 days ago (two agents), then fresh ones for the first agent."""
    from agents import services

    clock = types.SimpleNamespace(now=lambda: LONG_AGO + dt.timedelta(microseconds=AuditEvent.objects.count()))
    monkeypatch.setattr("audit.services.timezone", clock)
    first, second = make_agent("first"), make_agent("second")
    for agent in (first, second):
        services.agent_key_issue(agent=agent, by=personas["admin"])
        services.agent_suspend(agent=agent, by=personas["security"], reason="drill")
    old = AuditEvent.objects.count()
    monkeypatch.setattr("audit.services.timezone", timezone)
    services.agent_resume(agent=first, by=personas["admin"])
    services.agent_suspend(agent=first, by=personas["security"], reason="second drill")
    return first, second, old


def lines_of(path):
    with gzip.open(path, "rt") as lines:
        return [json.loads(line) for line in lines]


def test_old_events_move_to_a_compressed_file_and_everything_still_verifies(old_then_new, archive_dir, personas):
    first, second, old = old_then_new
    total = AuditEvent.objects.count()
    checkpoint_create()

    segment = audit_archive()

    assert segment.events == old
    assert not AuditEvent.objects.filter(occurred_at__lt=segment.cutoff).exists()
    archived = lines_of(archive_dir / segment.file_name)
    assert len(archived) == old and all(event["occurred_at"] < segment.cutoff.isoformat() for event in archived)
    first_chain = [event for event in archived if event["chain"] == chain_of(first)]
    assert first_chain[0]["seq"] == 1 and first_chain[0]["prev_hash"] == GENESIS
    # The first agent's chain continues in the table from the archive's last link.
    last_archived = first_chain[-1]
    next_in_table = AuditEvent.objects.filter(chain=chain_of(first)).order_by("seq").first()
    assert (next_in_table.seq, next_in_table.prev_hash) == (last_archived["seq"] + 1, last_archived["hash"])
    assert segment.chains[chain_of(first)] == [1, last_archived["seq"], GENESIS, last_archived["hash"]]
    # The second agent's chain is wholly archived; its head still matches.
    assert not AuditEvent.objects.filter(chain=chain_of(second)).exists()
    # The run itself is on the record, and nothing else disappeared.
    assert AuditEvent.objects.filter(action="audit.archived", resource=segment.file_name, payload__events=old).exists()
    assert AuditEvent.objects.count() == total - old + 1

    result = verify(archives=True)
    assert result.ok, result.problems
    assert result.archived_events == old
    # New events keep chaining after the archive, including on the fully archived chain.
    from agents import services

    services.agent_resume(agent=second, by=personas["admin"])
    checkpoint_create()
    assert verify(archives=True).ok


def test_a_second_run_continues_where_the_first_stopped(make_agent, personas, monkeypatch, archive_dir):
    from agents import services

    first = None
    for days_ago in (500, 450):  # two batches of old events, then fresh ones
        clock = types.SimpleNamespace(now=lambda days_ago=days_ago: timezone.now() - dt.timedelta(days=days_ago))
        monkeypatch.setattr("audit.services.timezone", clock)
        first = first or make_agent("first")
        services.agent_suspend(agent=first, by=personas["security"], reason="drill")
        services.agent_resume(agent=first, by=personas["admin"])
    monkeypatch.setattr("audit.services.timezone", timezone)
    services.agent_suspend(agent=first, by=personas["security"], reason="today")

    first_segment = audit_archive(retention_days=480)
    second_segment = audit_archive(retention_days=400)
    start, _, prev_hash, _ = second_segment.chains[chain_of(first)]
    assert (start, prev_hash) == (first_segment.chains[chain_of(first)][1] + 1, first_segment.chains[chain_of(first)][3])
    assert list(AuditEvent.objects.filter(chain=chain_of(first)).values_list("action", flat=True)) == ["agent.suspend"]
    result = verify(archives=True)
    assert result.ok, result.problems
    assert result.archived_events == first_segment.events + second_segment.events


def test_nothing_is_due_and_retention_zero_keeps_everything(history, archive_dir):
    assert audit_archive() is None  # nothing is 400 days old
    assert audit_archive(now=timezone.now() + dt.timedelta(days=1000), retention_days=0) is None
    assert not ArchiveSegment.objects.exists() and not list(archive_dir.iterdir())


def test_a_broken_chain_is_not_archived(old_then_new, archive_dir):
    first, _, old = old_then_new
    behind_the_triggers_back("UPDATE audit_auditevent SET reasons = '[\"edited\"]' WHERE chain = %s AND seq = 2",
                             [chain_of(first)])
    with pytest.raises(ArchiveRefused, match="chain is broken"):
        audit_archive()
    assert not ArchiveSegment.objects.exists()
    assert AuditEvent.objects.filter(occurred_at__lt=timezone.now() - dt.timedelta(days=400)).count() == old
    assert not list(archive_dir.iterdir())  # no partial file left behind


def test_the_database_deletes_only_what_a_named_segment_covers(old_then_new, archive_dir):
    first, second, _ = old_then_new
    segment = audit_archive()
    outside = AuditEvent.objects.filter(chain=chain_of(first)).first()
    for setting in ("", str(segment.pk)):
        # The application's role may not delete at all; the owner only what a named segment covers.
        for context, refusal in ((transaction.atomic, "permission denied"), (as_owner, "append-only")):
            with pytest.raises(DatabaseError, match=refusal):
                with context(), connection.cursor() as cursor:
                    cursor.execute("SELECT set_config('warden.audit_archive_segment', %s, true)", [setting])
                    cursor.execute("DELETE FROM audit_auditevent WHERE id = %s", [outside.pk])
    for statement in ("UPDATE audit_archivesegment SET events = 0", "DELETE FROM audit_archivesegment",
                      "TRUNCATE audit_archivesegment"):
        for context, refusal in ((transaction.atomic, "permission denied"), (as_owner, "append-only")):
            with pytest.raises(DatabaseError, match=refusal):
                with context(), connection.cursor() as cursor:
                    cursor.execute(statement)


def test_an_altered_or_missing_archive_file_is_caught(old_then_new, archive_dir):
    segment = audit_archive()
    path = archive_dir / segment.file_name
    events = lines_of(path)
    events[0]["reasons"] = ["nothing happened"]
    with gzip.open(path, "wt") as out:
        out.writelines(json.dumps(event) + "\n" for event in events)
    assert verify().ok  # the table and manifests alone are intact
    result = verify(archives=True)
    assert not result.ok and "does not match its recorded SHA-256" in result.first_break["problem"]
    path.unlink()
    assert "file not found" in verify(archives=True).first_break["problem"]


def test_a_forged_manifest_is_caught(old_then_new, archive_dir):
    first, _, _ = old_then_new
    segment = audit_archive()
    behind_the_triggers_back("UPDATE audit_archivesegment SET events = events - 1 WHERE id = %s", [segment.pk],
                             table="audit_archivesegment")
    assert "signature does not match" in verify().first_break["problem"]


def test_events_deleted_behind_the_triggers_back_still_break_the_chain_after_an_archive(old_then_new, archive_dir):
    first, _, _ = old_then_new
    audit_archive()
    behind_the_triggers_back("DELETE FROM audit_auditevent WHERE id = (SELECT min(id) FROM audit_auditevent WHERE chain = %s)",
                             [chain_of(first)])
    result = verify()
    assert not result.ok and "(an event was deleted or reordered)" in result.first_break["problem"]


def test_the_audit_archive_command(old_then_new, archive_dir, capsys):
    _, _, old = old_then_new
    call_command("audit_archive", "--dry-run")
    assert f"{old} events in 2 chains are older than" in capsys.readouterr().out
    assert not ArchiveSegment.objects.exists()
    call_command("audit_archive")
    assert f"archived {old} events to {archive_dir}" in capsys.readouterr().out
    call_command("audit_verify", "--archives")
    assert "audit log intact" in capsys.readouterr().out


@pytest.mark.django_db(transaction=True)
def test_parallel_verification_shares_one_snapshot_and_catches_the_same_breaks(make_agent, personas):
    from agents import services

    agents = [make_agent(f"agent-{n}") for n in range(4)]
    for agent in agents:
        services.agent_suspend(agent=agent, by=personas["security"], reason="drill")
        services.agent_resume(agent=agent, by=personas["admin"])
    sequential, parallel = verify(workers=1), verify(workers=2)
    assert sequential.ok and parallel.ok, parallel.problems
    assert parallel.events_checked == sequential.events_checked == AuditEvent.objects.count()
    assert parallel.chains == sequential.chains
    behind_the_triggers_back("UPDATE audit_auditevent SET actor_name = 'nobody' WHERE chain = %s AND seq = 2",
                             [chain_of(agents[2])])
    parallel = verify(workers=2)
    assert not parallel.ok and parallel.first_break["chain"] == chain_of(agents[2])
    assert parallel.first_break == verify(workers=1).first_break


def test_segments_signed_before_the_upgrade_still_verify(old_then_new, archive_dir):
    from audit.verify import _signature_v1

    segment = audit_archive()
    behind_the_triggers_back("UPDATE audit_archivesegment SET signature = %s WHERE id = %s",
                             [_signature_v1(segment), segment.pk], table="audit_archivesegment")
    result = verify(archives=True)
    assert result.ok, result.problems
