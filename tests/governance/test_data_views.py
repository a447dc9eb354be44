"""The registry of data views: admins write it, every human reads it, every change is audited."""

from __future__ import annotations

import pytest

from audit.models import AuditEvent
from governance.models import DataView


def test_an_admin_registers_and_reclassifies_a_view_over_the_api(api_for, team):
    admin = api_for("admin")
    created = admin.post("/api/v1/data-views/", {"name": "crm-contacts", "classification": "confidential",
                                                 "team": "research", "description": "Customers"}, format="json")
    assert created.status_code == 201, created.json()
    assert created.json()["classification"] == "confidential" and created.json()["updated_by"] == "admin-user"
    assert DataView.objects.get(name="crm-contacts").classification == 2
    changed = admin.patch("/api/v1/data-views/crm-contacts/", {"classification": "restricted"}, format="json")
    assert changed.status_code == 200 and changed.json()["classification"] == "restricted"
    events = list(AuditEvent.objects.filter(action__startswith="data_view.").order_by("id"))
    assert [event.action for event in events] == ["data_view.create", "data_view.update"]
    assert events[1].payload == {"classification": {"from": "confidential", "to": "restricted"}}
    assert events[1].actor_name == "admin-user" and events[1].data_classification == "restricted"
    listed = api_for("viewer").get("/api/v1/data-views/").json()
    assert [view["name"] for view in listed["results"]] == ["crm-contacts"]


@pytest.mark.parametrize("persona,read,write", [("admin", 200, 201), ("finance", 200, 403), ("security", 200, 403),
                                                ("viewer", 200, 403), ("outsider", 403, 403)])
def test_who_may_read_and_write_the_registry(api_for, team, persona, read, write):
    client = api_for(persona)
    assert client.get("/api/v1/data-views/").status_code == read
    body = {"name": "wiki", "classification": "public", "team": "research"}
    assert client.post("/api/v1/data-views/", body, format="json").status_code == write


def test_an_agent_key_cannot_touch_the_registry(bot, team):
    assert bot.get("/api/v1/data-views/").status_code == 403
    assert bot.post("/api/v1/data-views/", {"name": "mine", "classification": "public", "team": "research"},
                    format="json").status_code == 403


@pytest.mark.parametrize("body,field", [
    ({"name": "has spaces", "classification": "public", "team": "research"}, "name"),
    ({"name": "x", "classification": "top-secret", "team": "research"}, "classification"),
    ({"name": "x", "classification": 1, "team": "research"}, "classification"),
    ({"name": "x", "classification": "public", "team": "nobody"}, "team"),
    ({"name": "x", "classification": "public"}, "team"),
    ({"name": "x" * 101, "classification": "public", "team": "research"}, "name"),
])
def test_bad_views_are_400_and_change_nothing(api_for, team, body, field):
    response = api_for("admin").post("/api/v1/data-views/", body, format="json")
    assert response.status_code == 400 and field in response.json()["errors"], response.json()
    assert not DataView.objects.exists()


def test_a_name_is_registered_once(api_for, data_views):
    response = api_for("admin").post("/api/v1/data-views/", {"name": "crm", "classification": "public",
                                                             "team": "research"}, format="json")
    assert response.status_code == 400 and "already exists" in response.json()["errors"]["name"][0]
    assert DataView.objects.get(name="crm").classification == 1
    assert api_for("admin").get("/api/v1/data-views/nope/").status_code == 404
    assert api_for("admin").patch("/api/v1/data-views/crm/", {"classification": "secret"}, format="json").status_code == 400


def test_the_registry_page_for_admins_and_readers(client_for, team, data_views):
    admin = client_for("admin")
    bad = admin.post("/data-views/", {"name": "Bad Name", "classification": "9", "team": "research"})
    assert bad.status_code == 400 and not DataView.objects.filter(name="Bad Name").exists()
    ok = admin.post("/data-views/", {"name": "tickets", "classification": "1", "team": "research",
                                     "description": "Open tickets"})
    assert ok.status_code == 302 and DataView.objects.get(name="tickets").get_classification_display() == "internal"
    edited = admin.post("/data-views/tickets/", {"classification": "2", "team": "research", "description": "x",
                                                 "active": ""})
    assert edited.status_code == 302
    view = DataView.objects.get(name="tickets")
    assert (view.classification, view.active) == (2, False)
    viewer = client_for("viewer")
    page = viewer.get("/data-views/").content.decode()
    assert "tickets" in page and "retired" in page and "Register a data view" not in page
    assert viewer.post("/data-views/", {"name": "sneaky", "classification": "0", "team": "research"}).status_code == 403
    assert viewer.get("/data-views/tickets/").status_code == 403
