"""Append-only at the database, and verification that catches tampering behind its back."""

import pytest
from django.core.management import call_command
from django.db import DatabaseError, connection, transaction

from audit.models import AuditEvent
from audit.services import checkpoint_create
from audit.verify import verify
from tests.conftest import as_owner


@pytest.fixture
def history(make_agent, personas):
    """Two agents with a few lifecycle events each, plus global events."""
    from agents import services

    first, second = make_agent("first"), make_agent("second")
    for agent in (first, second):
        services.agent_key_issue(agent=agent, by=personas["admin"])
        services.agent_suspend(agent=agent, by=personas["security"], reason="drill")
        services.agent_resume(agent=agent, by=personas["admin"])
    return first, second


def behind_the_triggers_back(sql, params=(), table="audit_auditevent"):
    """What only the owner of the tables can do: switch the triggers off and rewrite history."""
    with as_owner() as cursor:
        cursor.execute(f"ALTER TABLE {table} DISABLE TRIGGER USER")
        cursor.execute(sql, params)
        cursor.execute(f"ALTER TABLE {table} ENABLE TRIGGER USER")


def chain_of(agent):
    return f"agent:{agent.pk}"


def test_an_untouched_log_verifies(history):
    result = verify()
    assert result.ok, result.problems
    assert result.events_checked == AuditEvent.objects.count() >= 8
    assert result.chains == AuditEvent.objects.values("chain").distinct().count()


@pytest.mark.parametrize("statement", [
    "UPDATE audit_auditevent SET outcome = 'allowed'",
    "DELETE FROM audit_auditevent",
    "TRUNCATE audit_auditevent",
])
def test_the_database_refuses_to_change_events(history, statement):
    # The application's role lacks the privilege...
    with pytest.raises(DatabaseError, match="permission denied"):
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(statement)
    with pytest.raises(DatabaseError, match="permission denied"):
        with transaction.atomic():
            AuditEvent.objects.filter(action="agent.suspend").update(reasons=["nothing to see"])
    # ... and even the owner meets the trigger.
    with pytest.raises(DatabaseError, match="append-only"):
        with as_owner() as cursor:
            cursor.execute(statement)
    assert verify().ok


def test_a_changed_event_is_caught(history):
    first, _ = history
    behind_the_triggers_back("UPDATE audit_auditevent SET reasons = '[\"routine\"]' WHERE chain = %s AND action = 'agent.suspend'",
                             [chain_of(first)])
    result = verify()
    assert not result.ok
    assert "content does not match its hash" in result.first_break["problem"]
    assert result.first_break["chain"] == chain_of(first)


def test_a_deleted_event_is_caught(history):
    first, _ = history
    behind_the_triggers_back("DELETE FROM audit_auditevent WHERE chain = %s AND seq = 2", [chain_of(first)])
    result = verify()
    assert not result.ok and "expected seq 2, found 3" in result.first_break["problem"]


def test_reordered_events_are_caught(history):
    first, _ = history
    chain = chain_of(first)
    for old, new in ((2, -2), (3, 2), (-2, 3)):  # swap events 2 and 3 past the unique (chain, seq) index
        behind_the_triggers_back("UPDATE audit_auditevent SET seq = %s WHERE chain = %s AND seq = %s", [new, chain, old])
    result = verify()
    assert not result.ok and "does not link to the event before it" in result.first_break["problem"]


def test_a_cut_tail_is_caught_by_the_head(history):
    first, _ = history
    behind_the_triggers_back("DELETE FROM audit_auditevent WHERE chain = %s AND seq = (SELECT max(seq) FROM audit_auditevent WHERE chain = %s)",
                             [chain_of(first), chain_of(first)])
    result = verify()
    assert not result.ok and "events cut off" in result.first_break["problem"]


def test_a_cut_tail_with_a_forged_head_is_caught_by_the_signed_checkpoint(history):
    first, _ = history
    chain = chain_of(first)
    checkpoint_create()
    last = AuditEvent.objects.filter(chain=chain).order_by("-seq").first()
    before = AuditEvent.objects.get(chain=chain, seq=last.seq - 1)
    behind_the_triggers_back("DELETE FROM audit_auditevent WHERE id = %s", [last.pk])
    with connection.cursor() as cursor:
        cursor.execute("UPDATE audit_chainhead SET seq = %s, hash = %s WHERE chain = %s", [before.seq, before.hash, chain])
    result = verify()
    assert not result.ok
    assert "checkpoint" in result.first_break["problem"] and "missing" in result.first_break["problem"]


def test_a_forged_checkpoint_signature_is_caught(history):
    checkpoint = checkpoint_create()
    behind_the_triggers_back("UPDATE audit_checkpoint SET events = events + 1 WHERE id = %s", [checkpoint.pk],
                             table="audit_checkpoint")
    assert "signature does not match" in verify().first_break["problem"]


def test_audit_verify_exits_0_when_intact_and_1_with_the_first_broken_link(history, capsys):
    call_command("audit_verify")
    assert "audit log intact" in capsys.readouterr().out
    first, _ = history
    behind_the_triggers_back("UPDATE audit_auditevent SET actor_name = 'nobody' WHERE chain = %s AND seq = 1", [chain_of(first)])
    with pytest.raises(SystemExit) as exit_info:
        call_command("audit_verify")
    assert exit_info.value.code == 1
    assert "first broken link" in capsys.readouterr().err


def test_gate_decisions_are_chained_and_verifiable(bot, policy):
    from tests.conftest import ask

    policy("all", "permit(principal, action, resource);")
    for _ in range(5):
        ask(bot)
    assert verify().ok
