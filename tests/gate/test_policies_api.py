import pytest

from governance.models import Policy, PolicySetVersion, PolicyVersion
from tests.conftest import ask

PERMIT_ALL = "permit(principal, action, resource);"


def create(client, name="allow-llm", body='permit(principal, action == Action::"llm.call", resource);', **extra):
    return client.post("/api/v1/policies/", {"name": name, "body": body, "reason": "first", **extra}, format="json")


def test_an_admin_creates_a_policy_which_publishes_a_new_set(api_for):
    response = create(api_for("admin"))
    assert response.status_code == 201, response.json()
    assert response.json()["version"] == 1
    policy = Policy.objects.get(name="allow-llm")
    assert policy.current.number == 1 and policy.current.created_by.username == "admin-user"
    published = PolicySetVersion.objects.get()
    assert published.members == [["allow-llm", 1]]


@pytest.mark.parametrize(
    "body,expected",
    [
        ("permit(principal, action, resource) when { principal.nope == 1 };", "line 1: attribute `nope`"),
        ('permit(\n  principal,\n  action == Action::"llm.call",\n  resource\n) when { context.budget > 3 };', "line 5"),
        ("permit(principal, action, resource) when {", "Cedar could not parse this"),
        ("permit(principal, action, resource);\npermit(principal, action, resource);", "exactly one policy"),
        ('@escalate("nobody")\nforbid(principal, action, resource);', "@escalate must name"),
        ('@escalate("finance")\npermit(principal, action, resource);', "only makes sense on a forbid"),
        ('@mode("loud")\nforbid(principal, action, resource);', "@mode must be"),
        ('permit(principal, action == Action::"fly", resource);', "fly"),
        ('permit(principal is Spaceship, action, resource);', "Spaceship"),
        ("", "blank"),
    ],
)
def test_invalid_policies_are_refused_with_cedars_message(api_for, body, expected):
    response = create(api_for("admin"), body=body)
    assert response.status_code == 400
    messages = " ".join(response.json()["errors"]["body"])
    assert expected in messages, messages
    assert not Policy.objects.exists() and not PolicySetVersion.objects.exists()


def test_validate_reports_problems_without_saving(api_for):
    client = api_for("security")
    good = client.post("/api/v1/policies/validate/", {"body": PERMIT_ALL}, format="json").json()
    assert good == {"valid": True, "errors": []}
    bad = client.post("/api/v1/policies/validate/", {"body": "permit(principal, action, resource) when { context.x };"}, format="json").json()
    assert bad["valid"] is False and "line 1" in bad["errors"][0]
    assert not Policy.objects.exists()


def test_every_edit_is_a_new_version_and_any_version_can_be_restored(api_for):
    client = api_for("admin")
    create(client)
    response = client.patch("/api/v1/policies/allow-llm/", {"body": PERMIT_ALL, "reason": "open up"}, format="json")
    assert response.status_code == 200 and response.json()["version"] == 2
    nothing = client.patch("/api/v1/policies/allow-llm/", {"body": PERMIT_ALL, "reason": "again"}, format="json")
    assert nothing.status_code == 400
    missing_reason = client.patch("/api/v1/policies/allow-llm/", {"body": "forbid(principal, action, resource);"}, format="json")
    assert missing_reason.status_code == 400
    versions = client.get("/api/v1/policies/allow-llm/versions/").json()
    assert [(v["number"], v["reason"]) for v in versions] == [(2, "open up"), (1, "first")]
    restored = client.post("/api/v1/policies/allow-llm/restore/", {"version": 1, "reason": "too open"}, format="json")
    assert restored.status_code == 200 and restored.json()["version"] == 3
    assert PolicyVersion.objects.get(policy__name="allow-llm", number=3).restored_from == 1
    assert PolicyVersion.objects.get(policy__name="allow-llm", number=1).body == PolicyVersion.objects.get(number=3).body
    assert client.post("/api/v1/policies/allow-llm/restore/", {"version": 9}, format="json").status_code == 400
    assert [s.number for s in PolicySetVersion.objects.all()] == [3, 2, 1]


def test_disabling_a_policy_takes_it_out_of_the_set(api_for, bot):
    client = api_for("admin")
    create(client, "all", PERMIT_ALL)
    create(client, "stop", "forbid(principal, action, resource);")
    assert ask(bot).json()["outcome"] == "denied"
    assert client.post("/api/v1/policies/stop/disable/", {"reason": "incident over"}, format="json").status_code == 200
    assert ask(bot).json()["outcome"] == "allowed"
    assert client.post("/api/v1/policies/stop/enable/", {"reason": "again"}, format="json").status_code == 200
    assert ask(bot).json()["outcome"] == "denied"


@pytest.mark.parametrize("persona,read,write", [
    ("admin", 200, 201), ("security", 200, 403), ("viewer", 200, 403), ("finance", 403, 403), ("outsider", 403, 403),
])
def test_policy_permissions(api_for, persona, read, write):
    client = api_for(persona)
    assert client.get("/api/v1/policies/").status_code == read
    assert create(client).status_code == write


def test_reserved_and_duplicate_names_are_refused(api_for):
    client = api_for("admin")
    assert create(client, name="validate").status_code == 400
    assert create(client).status_code == 201
    assert create(client).status_code == 400
    assert Policy.objects.count() == 1


def test_simulate_shows_which_recorded_decisions_a_draft_would_change(api_for, bot):
    admin = api_for("admin")
    create(admin, "all", PERMIT_ALL)
    for resource in ("gpt-4o-mini", "gpt-4o", "gpt-4o-mini"):
        assert ask(bot, resource=resource).json()["outcome"] == "allowed"
    draft = {"changes": [{"name": "no-gpt4o", "body": 'forbid(principal, action, resource == Model::"gpt-4o");'}]}
    result = api_for("security").post("/api/v1/policies/simulate/", draft, format="json").json()
    assert result["decisions_replayed"] == 3
    assert [(c["resource"], c["current"], c["draft"], c["draft_policies"]) for c in result["changed"]] == [
        ("gpt-4o", "allowed", "denied", ["no-gpt4o"])
    ]
    off = api_for("admin").post("/api/v1/policies/simulate/", {"changes": [{"name": "all", "enabled": False}]}, format="json").json()
    assert len(off["changed"]) == 3
    assert not Policy.objects.filter(name="no-gpt4o").exists()  # nothing was published
    bad = admin.post("/api/v1/policies/simulate/", {"changes": [{"name": "x", "body": "permit("}]}, format="json")
    assert bad.status_code == 400


def test_roles_and_grants_over_the_api(api_for, make_agent, bot):
    admin = api_for("admin")
    assert admin.post("/api/v1/roles/", {"name": "auditor", "scopes": ["data.read"]}, format="json").status_code == 201
    assert admin.post("/api/v1/roles/", {"name": "bad", "scopes": ["root"]}, format="json").status_code == 400
    assert api_for("viewer").post("/api/v1/roles/", {"name": "x", "scopes": []}, format="json").status_code == 403
    agent = make_agent("reader", role_names=())
    response = admin.post(f"/api/v1/agents/{agent.pk}/roles/", {"role": "auditor", "expires_at": "2099-01-01T00:00:00Z"}, format="json")
    assert response.status_code == 201
    assert admin.post(f"/api/v1/agents/{agent.pk}/roles/", {"role": "auditor"}, format="json").status_code == 400
    assert admin.post(f"/api/v1/agents/{agent.pk}/roles/", {"role": "ghost"}, format="json").status_code == 400
    past = admin.post(f"/api/v1/agents/{agent.pk}/roles/", {"role": "llm-user", "expires_at": "2001-01-01T00:00:00Z"}, format="json")
    assert past.status_code == 400
    grant_id = response.json()["id"]
    from governance.models import RoleGrant

    assert RoleGrant.objects.get(pk=grant_id).granted_by.username == "admin-user"
    assert admin.delete(f"/api/v1/agents/{agent.pk}/roles/{grant_id}/").status_code == 204
    assert RoleGrant.objects.get(pk=grant_id).revoked_at is not None
    changed = admin.patch("/api/v1/roles/auditor/", {"scopes": ["data.read", "llm.call"]}, format="json")
    assert changed.json()["scopes"] == ["data.read", "llm.call"]


@pytest.mark.parametrize("name", sorted(__import__("governance.policy_templates", fromlist=["TEMPLATES"]).TEMPLATES))
def test_every_starter_template_validates_against_the_schema(name):
    from governance.policy_templates import TEMPLATES
    from governance.services import policy_problems

    assert policy_problems(TEMPLATES[name][1]) == []


def test_starter_templates_behave_as_described(bot, policy, data_views):
    from governance.policy_templates import TEMPLATES

    for name in ("baseline-permit", "expensive-calls-need-finance", "confidential-data-needs-clearance"):
        policy(name, TEMPLATES[name][1])
    assert ask(bot).json()["outcome"] == "allowed"
    pricey = {"input_tokens": 1, "max_output_tokens": 1, "estimated_cost_micros": 2_000_000}
    assert ask(bot, context=pricey).json()["outcome"] == "pending_approval"
    assert ask(bot, "data.read", "crm", {}).json()["outcome"] == "allowed"
    assert ask(bot, "data.read", "payroll", {}).json()["policies"] == ["confidential-data-needs-clearance"]


def test_windows_line_endings_are_not_a_new_version(api_for):
    client = api_for("admin")
    create(client, "p", "forbid(principal, action, resource)\nwhen { context.hour > 22 };")
    response = client.patch("/api/v1/policies/p/", {"body": "forbid(principal, action, resource)\r\nwhen { context.hour > 22 };\r\n", "reason": "x"}, format="json")
    assert response.status_code == 400
    assert PolicyVersion.objects.filter(policy__name="p").count() == 1


def test_the_longest_reason_allowed_publishes_a_policy_set_whose_reason_is_cut_to_fit(api_for, policy):
    """Found by the API fuzzing: a 500-character reason, prefixed with the policy's name for the set's
    reason, overflowed its column (a 500)."""
    policy("all", "permit(principal, action, resource);")
    admin = api_for("admin")
    response = admin.post("/api/v1/policies/all/restore/", {"version": 1, "reason": "r" * 500}, format="json")
    assert response.status_code == 200, response.json()
    newest = PolicySetVersion.objects.order_by("-number").first()
    assert len(newest.reason) == 500 and newest.reason.startswith("all v2: rrr") and newest.reason.endswith("…")
