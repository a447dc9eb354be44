import csv
import io
import json

import pytest

from audit.models import AuditEvent
from tests.conftest import PASSWORD, ask

PERMIT_ALL = "permit(principal, action, resource);"


@pytest.fixture
def decisions(bot, policy):
    policy("all", PERMIT_ALL)
    policy("no-4o", 'forbid(principal, action, resource == Model::"gpt-4o");')
    for resource in ("gpt-4o-mini", "gpt-4o", "gpt-4o-mini"):
        ask(bot, resource=resource, correlation_id="run-0001-trace")
    return bot


def test_security_filters_the_timeline(client_for, decisions):
    client = client_for("security")
    page = client.get("/audit/?outcome=denied").content.decode()
    assert "forbidden by policy no-4o" in page and "permitted by policy all" not in page
    page = client.get("/audit/?agent=bot&action=gate.").content.decode()
    assert page.count("gate.llm.call") == 3
    assert "no-4o" in client.get("/audit/?q=no-4o").content.decode()


@pytest.mark.parametrize("persona", ["admin", "finance", "viewer", "outsider"])
def test_only_security_reads_the_audit_log(client_for, api_for, decisions, persona):
    assert client_for(persona).get("/audit/").status_code == 403
    assert api_for(persona).get("/api/v1/audit/events/").status_code == 403
    assert api_for(persona).get("/api/v1/audit/verify/").status_code == 403
    assert client_for(persona).get("/audit/export.csv").status_code == 403


@pytest.mark.parametrize("query", ["since=yesterday", "until=2026-13-45", "limit=100000", "cursor=%25%25%25",
                                   "since=2026-11-02T00:00&until=2026-11-01T00:00"])
def test_bad_filters_are_clear_errors_never_a_500(client_for, api_for, decisions, query):
    page = client_for("security").get(f"/audit/?{query}")
    assert page.status_code == 400 and b'role="alert"' in page.content
    api = api_for("security").get(f"/api/v1/audit/events/?{query}")
    assert api.status_code == 400 and api["Content-Type"] == "application/problem+json"


def test_unknown_filters_are_refused_by_the_api(api_for, decisions):
    response = api_for("security").get("/api/v1/audit/events/?colour=red")
    assert response.status_code == 400 and "colour" in response.json()["errors"]


def test_injection_attempts_in_text_are_just_text(api_for, decisions):
    response = api_for("security").get("/api/v1/audit/events/", {"q": "'; DROP TABLE audit_auditevent; --"})
    assert response.status_code == 200 and response.json()["results"] == []
    assert AuditEvent.objects.exists()


def test_the_api_pages_with_a_cursor_newest_first(api_for, decisions):
    client = api_for("security")
    seen, cursor = [], None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        body = client.get("/api/v1/audit/events/", params).json()
        seen += [event["id"] for event in body["results"]]
        cursor = body["next_cursor"]
        if not cursor:
            break
    assert seen == list(AuditEvent.objects.order_by("-occurred_at", "-id").values_list("id", flat=True))


def test_the_timeline_loads_older_events_as_a_fragment(client_for, decisions):
    client = client_for("security")
    first = client.get("/audit/?limit=2").content.decode()
    assert 'id="older"' in first
    cursor = first.split("cursor=")[1].split('"')[0].split("&")[0]
    fragment = client.get(f"/audit/?limit=2&cursor={cursor}", HTTP_HX_REQUEST="true")
    assert fragment.status_code == 200 and b"<html" not in fragment.content and b"<tr" in fragment.content


def test_verify_over_the_api(api_for, decisions):
    body = api_for("security").get("/api/v1/audit/verify/").json()
    assert body["ok"] is True and body["events_checked"] == AuditEvent.objects.count()


def test_exports_follow_the_filter(client_for, decisions):
    client = client_for("security")
    exported = client.get("/audit/export.csv?outcome=denied")
    rows = list(csv.reader(io.StringIO(b"".join(exported.streaming_content).decode())))
    assert rows[0][0] == "id" and len(rows) == 2 and rows[1][8] == "denied"
    lines = b"".join(client.get("/audit/export.jsonl?agent=bot&action=gate.").streaming_content).decode().splitlines()
    assert len(lines) == 3 and json.loads(lines[0])["agent_name"] == "bot"
    assert client.get("/audit/export.xml").status_code == 404


def test_a_trace_shows_one_correlation_id_as_a_tree(client_for, decisions):
    page = client_for("security").get("/audit/trace/run-0001-trace/").content.decode()
    assert page.count("gate.llm.call") == 3 and "bot" in page


def test_sign_ins_and_failed_sign_ins_are_recorded(client, personas):
    client.post("/login/", {"username": "viewer-user", "password": "wrong"})
    client.post("/login/", {"username": "viewer-user", "password": PASSWORD})
    failed = AuditEvent.objects.get(action="auth.sign_in_failed")
    assert (failed.outcome, failed.resource, failed.actor_type) == ("denied", "user:viewer-user", "system")
    assert "wrong" not in json.dumps(failed.payload)  # the attempted password is never recorded
    assert AuditEvent.objects.get(action="auth.sign_in").actor_name == "viewer-user"


def test_security_verifies_the_chains_from_the_timeline_and_a_tampered_event_shows_broken(client_for, bot, policy):
    from audit.models import AuditEvent
    from tests.conftest import as_owner, ask

    policy("all", "permit(principal, action, resource);")
    ask(bot)
    security = client_for("security")
    page = security.post("/audit/verify/", HTTP_HX_REQUEST="true")
    assert page.status_code == 200 and 'data-ok="true"' in page.content.decode()
    assert f"{AuditEvent.objects.count()} events in" in page.content.decode()
    assert client_for("finance").post("/audit/verify/").status_code == 403
    assert security.get("/audit/verify/").status_code == 405

    event = AuditEvent.objects.order_by("id").last()
    with as_owner() as cursor:
        cursor.execute("ALTER TABLE audit_auditevent DISABLE TRIGGER USER")
        cursor.execute("UPDATE audit_auditevent SET reasons = '[\"nothing to see\"]' WHERE id = %s", [event.pk])
        cursor.execute("ALTER TABLE audit_auditevent ENABLE TRIGGER USER")
    page = security.post("/audit/verify/", HTTP_HX_REQUEST="true").content.decode()
    assert 'data-ok="false"' in page and "Broken." in page
