"""Policy, role and grant pages, with their permissions and bad input."""

import pytest

from governance.models import Policy, PolicyVersion, Role, RoleGrant
from tests.conftest import ask

PERMIT_ALL = "permit(principal, action, resource);"


@pytest.mark.parametrize("persona,status", [("admin", 200), ("security", 200), ("viewer", 200), ("finance", 403)])
def test_the_policy_list_is_for_those_who_may_read_policies(client_for, policy, persona, status):
    policy("all", PERMIT_ALL)
    response = client_for(persona).get("/policies/")
    assert response.status_code == status
    if status == 200:
        assert b"all" in response.content
        assert (b"New policy" in response.content) == (persona == "admin")


def test_an_admin_writes_a_policy_in_the_editor(client_for):
    client = client_for("admin")
    form = client.get("/policies/new/?template=no-deep-delegation").content.decode()
    assert "delegation_depth &gt; 2" in form
    response = client.post("/policies/new/", {"name": "nd", "description": "", "body": "forbid(principal, action, resource)\r\nwhen { context.delegation_depth > 2 };", "reason": "safety"})
    assert response.status_code == 302
    assert Policy.objects.get(name="nd").current.body.endswith("> 2 };\n")


def test_the_editor_shows_cedars_errors_and_saves_nothing(client_for):
    response = client_for("admin").post("/policies/new/", {"name": "bad", "body": "permit(principal, action, resource) when { context.nope };", "reason": "x"})
    assert response.status_code == 400
    assert b"line 1" in response.content and b"nope" in response.content
    assert not Policy.objects.exists()


def test_inline_validation_is_a_fragment_of_the_editor(client_for):
    response = client_for("security").post("/policies/validate/", {"body": "permit(principal, action, resource) when { x"}, HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    assert b"<html" not in response.content and b'id="verdict"' in response.content and b"could not parse" in response.content
    ok = client_for("security").post("/policies/validate/", {"body": PERMIT_ALL}, HTTP_HX_REQUEST="true")
    assert b"Valid against the Warden schema" in ok.content


@pytest.mark.parametrize("persona", ["security", "viewer", "finance"])
def test_only_admins_edit_policies(client_for, policy, persona):
    policy("all", PERMIT_ALL)
    client = client_for(persona)
    assert client.get("/policies/new/").status_code == 403
    assert client.post("/policies/all/edit/", {"body": "forbid(principal, action, resource);", "reason": "x"}).status_code == 403
    assert client.post("/policies/all/toggle/", {"enabled": "0", "reason": "x"}).status_code == 403
    assert Policy.objects.get(name="all").current.number == 1 and Policy.objects.get(name="all").enabled


def test_history_shows_diffs_and_restore_makes_a_new_version(client_for, policy):
    policy("p", "forbid(principal, action, resource)\nwhen { context.hour > 20 };")
    client = client_for("admin")
    client.post("/policies/p/edit/", {"description": "", "body": "forbid(principal, action, resource)\nwhen { context.hour > 22 };", "reason": "later"})
    page = client.get("/policies/p/").content.decode()
    assert "-when { context.hour &gt; 20 };" in page and "+when { context.hour &gt; 22 };" in page
    assert client.post("/policies/p/restore/", {"version": "1", "reason": "too late"}).status_code == 302
    assert PolicyVersion.objects.get(policy__name="p", number=3).restored_from == 1
    assert client.post("/policies/p/restore/", {"version": "abc"}).status_code == 302
    assert PolicyVersion.objects.filter(policy__name="p").count() == 3


def test_disabling_needs_a_reason(client_for, policy):
    policy("p", PERMIT_ALL)
    client = client_for("admin")
    client.post("/policies/p/toggle/", {"enabled": "0", "reason": ""})
    assert Policy.objects.get(name="p").enabled
    client.post("/policies/p/toggle/", {"enabled": "0", "reason": "noisy"})
    assert not Policy.objects.get(name="p").enabled


def test_the_simulate_page_lists_changed_decisions(client_for, policy, bot):
    policy("all", PERMIT_ALL)
    ask(bot, resource="gpt-4o")
    response = client_for("security").post("/policies/simulate/", {"name": "no-4o", "body": 'forbid(principal, action, resource == Model::"gpt-4o");', "limit": "100"})
    assert response.status_code == 200
    assert b"1 of 1 decisions would change" in response.content
    bad = client_for("security").post("/policies/simulate/", {"name": "x", "body": "", "limit": "0"})
    assert bad.status_code == 400
    assert not Policy.objects.filter(name="no-4o").exists()


def test_roles_are_created_by_admins_and_granted_on_the_agent_page(client_for, make_agent):
    admin = client_for("admin")
    assert admin.post("/policies/roles/", {"name": "reader", "scopes": ["data.read"]}).status_code == 302
    assert admin.post("/policies/roles/", {"name": "reader", "scopes": ["data.read"]}).status_code == 400
    assert client_for("viewer").post("/policies/roles/", {"name": "x"}).status_code == 403
    agent = make_agent("r1", role_names=())
    assert admin.post(f"/agents/{agent.pk}/roles/", {"role": "reader", "expires_in_days": "7"}).status_code == 302
    grant = RoleGrant.objects.get(agent=agent, role__name="reader")
    assert grant.expires_at is not None and grant.granted_by.username == "admin-user"
    page = admin.get(f"/agents/{agent.pk}/").content.decode()
    assert "reader" in page and "Grant role" in page
    assert admin.post(f"/agents/{agent.pk}/roles/{grant.pk}/revoke/").status_code == 302
    grant.refresh_from_db()
    assert grant.revoked_at is not None
    assert client_for("security").post(f"/agents/{agent.pk}/roles/", {"role": "reader"}).status_code == 403
    assert Role.objects.filter(name="reader").count() == 1


def test_the_agent_page_lists_its_recent_actions(client_for, policy, bot):
    policy("all", PERMIT_ALL)
    policy("no-4o", 'forbid(principal, action, resource == Model::"gpt-4o");')
    ask(bot, resource="gpt-4o")
    page = client_for("viewer").get(f"/agents/{bot.agent.pk}/").content.decode()
    assert "forbidden by policy no-4o" in page


def test_pending_approvals_are_listed_for_the_group_they_are_routed_to(client_for, policy, bot):
    policy("all", PERMIT_ALL)
    policy("esc", '@escalate("finance")\nforbid(principal, action, resource == Model::"gpt-4o");')
    policy("sec", '@escalate("security")\nforbid(principal, action, resource == Model::"gpt-4o-mini");')
    ask(bot, resource="gpt-4o")
    ask(bot, resource="gpt-4o-mini")
    finance = client_for("finance").get("/approvals/").content.decode()
    security = client_for("security").get("/approvals/").content.decode()
    admin = client_for("admin").get("/approvals/").content.decode()
    assert "requires approval by finance" in finance and "requires approval by security" not in finance
    assert "requires approval by security" in security and "requires approval by finance" not in security
    assert "requires approval by finance" in admin and "requires approval by security" in admin
    assert client_for("viewer").get("/approvals/").status_code == 403
