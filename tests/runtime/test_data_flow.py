"""Data views that serve data, labels that travel with it, and the flow rule at the gate.

Agents see only what their clearance allows (masks, row rules); everything a run derives from data carries
the data's classification through model steps, tool steps and delegations; handing it to a receiver not
cleared for it is denied, naming the source; an agent over the REST API cannot declare its way around it.
"""

from __future__ import annotations

import json

import pytest

from agents.models import AgentRun, Clearance, RunStep
from audit.models import AuditEvent
from governance.models import Action, DataSink

from .conftest import drive
from .test_tools import site

CUSTOMERS = [
    {"id": "c-1", "company": "Northwind", "contact": "Ada", "email": "ada@northwind.example", "region": "EU",
     "segment": "new", "seats": 5},
    {"id": "c-2", "company": "Globex", "contact": "Bram", "email": "bram@globex.example", "region": "US",
     "segment": "new", "seats": 12},
    {"id": "c-3", "company": "Initech", "contact": "Chiara", "email": "chiara@initech.example", "region": "EU",
     "segment": "existing", "seats": 40},
]
COLUMNS = ["id", "company", "contact", "email", "region", "segment", "seats"]
SHAPE = {"columns": COLUMNS, "masks": {"email": "confidential", "contact": "confidential"},
         "base_classification": "internal",  # company, region, seats ...
         "row_rules": [{"below": "confidential", "column": "region", "in": ["EU"]}], "max_rows": 50}


@pytest.fixture
def customers(settings, tmp_path, personas, team):
    from governance.services import data_view_create

    (tmp_path / "customers.jsonl").write_text("".join(json.dumps(row) + "\n" for row in CUSTOMERS))
    settings.WARDEN_DATA_DIR = str(tmp_path)
    return data_view_create(name="customers", classification="confidential", team=team, by=personas["admin"],
                            source="file:customers.jsonl", **SHAPE)


@pytest.fixture
def sinks(personas, prices):
    """A self-hosted model and the search tool may see confidential data; other models and tools internal
    data (the default), the outside world public data only (the default)."""
    from billing.services import price_set

    price_set(kind="model", name="local-llm", input_per_million_micros=50_000, output_per_million_micros=50_000,
              by=personas["finance"])
    price_set(kind="endpoint", name="*", per_call_micros=1_000, by=personas["finance"])
    DataSink.objects.create(kind="model", name="local-llm", clearance=Clearance.CONFIDENTIAL)
    DataSink.objects.create(kind="tool", name="search", clearance=Clearance.CONFIDENTIAL)


@pytest.fixture
def cleared(runner_agent, customers, sinks, settings):
    settings.WARDEN_HTTP_TOOL_HOSTS = ["127.0.0.1"]
    settings.WARDEN_TOOLS = [*settings.WARDEN_TOOLS, "tests.runtime.tools.SEARCH"]

    def make(program: str, name: str, clearance=Clearance.CONFIDENTIAL, **kwargs):
        kwargs.setdefault("allowed_models", ["local-llm", "gpt-4o-mini"])
        return runner_agent(program, name=name, clearance=clearance, **kwargs)

    return make


# --- serving: masks and rows per clearance, bad input --------------------------------------------------------


def read(client, view="customers", **body):
    return client.post(f"/api/v1/data-views/{view}/read/", body, format="json")


def test_an_internal_agent_sees_masked_emails_and_its_regions_rows_and_a_confidential_one_sees_all(
        make_agent, agent_client, customers, permitted):
    internal = agent_client(make_agent("intern", clearance=Clearance.INTERNAL))
    confidential = agent_client(make_agent("account-lead", clearance=Clearance.CONFIDENTIAL))

    masked = read(internal).json()
    assert masked["outcome"] == "allowed" and masked["masked"] == ["contact", "email"]
    assert [row["id"] for row in masked["rows"]] == ["c-1", "c-3"]  # its rule: EU rows only
    assert {row["email"] for row in masked["rows"]} == {"•••"} and masked["classification"] == "internal"

    full = read(confidential).json()
    assert [row["id"] for row in full["rows"]] == ["c-1", "c-2", "c-3"]
    assert full["rows"][1]["email"] == "bram@globex.example" and full["classification"] == "confidential"

    some = read(confidential, filters={"segment": "new"}, columns=["company", "email"], limit=1).json()
    assert some["rows"] == [{"company": "Northwind", "email": "ada@northwind.example"}] and some["truncated"]
    action = Action.objects.get(pk=some["action"])
    assert (action.status, action.usage["usage"]) == ("succeeded", {"rows": 1})


@pytest.mark.parametrize("body,view,says", [
    ({}, "nowhere", "No such data view"),
    ({"filters": {"colour": "red"}}, "customers", "has no column 'colour'"),
    ({"limit": 51}, "customers", "From 1 to 50 rows"),
    ({"columns": ["company", "email"]}, "customers", "email is masked at this clearance"),
    ({"filters": {"email": "ada@northwind.example"}}, "customers", "email is masked"),
])
def test_bad_reads_are_clear_errors_and_nothing_is_read_or_asked(make_agent, agent_client, customers, permitted,
                                                                   body, view, says):
    agent = make_agent("intern", clearance=Clearance.INTERNAL)
    answer = read(agent_client(agent), view=view, **body)
    assert answer.status_code == 400 and answer["Content-Type"] == "application/problem+json"
    assert says in answer.content.decode()
    assert not Action.objects.filter(agent=agent).exists()


def test_a_table_in_a_database_warden_connects_to_is_served_the_same_way(make_agent, agent_client, permitted,
                                                                          personas, team, settings, app_role):
    from psycopg import sql

    from governance.services import data_view_create
    from tests.conftest import as_owner

    with as_owner() as cursor:
        cursor.execute("CREATE TABLE crm_customers (id text, company text, contact text, email text, region text, "
                       "segment text, seats integer)")
        for row in CUSTOMERS:
            cursor.execute("INSERT INTO crm_customers VALUES (%s, %s, %s, %s, %s, %s, %s)", [row[c] for c in COLUMNS])
        cursor.execute(sql.SQL("GRANT SELECT ON crm_customers TO {}").format(sql.Identifier(app_role[0]))
                       .as_string(cursor.connection))
    settings.WARDEN_DATA_DATABASES = ["default"]
    data_view_create(name="crm", classification="confidential", team=team, by=personas["admin"],
                     source="table:default:crm_customers", **SHAPE)
    internal = read(agent_client(make_agent("intern", clearance=Clearance.INTERNAL)), view="crm",
                    filters={"segment": "existing"}).json()
    assert internal["rows"] == [{"id": "c-3", "company": "Initech", "contact": "•••", "email": "•••", "region": "EU",
                                 "segment": "existing", "seats": 40}]
    # A filter of another type than the column's is compared as text: no rows, no error.
    typed = read(agent_client(make_agent("typed", clearance=Clearance.CONFIDENTIAL)), view="crm",
                 filters={"seats": "many"})
    assert typed.status_code == 200 and typed.json()["rows"] == []
    # A filter value is a parameter, never SQL.
    sly = read(agent_client(make_agent("sly", clearance=Clearance.CONFIDENTIAL)), view="crm",
               filters={"company": "x' OR '1'='1"}).json()
    assert sly["outcome"] == "allowed" and sly["rows"] == []


def test_a_view_must_name_a_source_and_columns_warden_can_read(api_for, team, settings, tmp_path):
    settings.WARDEN_DATA_DIR = str(tmp_path)
    admin = api_for("admin")
    base = {"name": "leaky", "classification": "internal", "team": team.name, "columns": ["a"]}
    for source in ("file:../../etc/passwd.csv", "file:/etc/passwd", "table:nowhere:t", "table:default:t;drop"):
        answer = admin.post("/api/v1/data-views/", {**base, "source": source}, format="json")
        assert answer.status_code == 400, source
    answer = admin.post("/api/v1/data-views/", {**base, "source": "file:a.csv", "masks": {"b": "internal"}},
                        format="json")
    assert answer.status_code == 400 and "masks" in answer.json()["errors"]


# --- labels that travel, the flow rule --------------------------------------------------------------------


def test_a_label_survives_a_model_step_a_tool_step_and_a_delegation(cleared, start, client_for):
    cleared("analyse", "analyst")
    boss = cleared("boss", "lead", role_names=("orchestrator", "researcher"))
    run = start(boss, "onboard the new customers")
    for _ in range(5):
        drive(run)
        child = AgentRun.objects.filter(parent=run).first()
        if child is not None:
            drive(child)
        run.refresh_from_db()
        if run.status != "running":
            break
    assert run.status == "succeeded", run.error
    child = AgentRun.objects.get(parent=run)
    assert child.status == "succeeded" and child.source == "delegation" and child.correlation_id == run.correlation_id
    steps = {step.index: step for step in RunStep.objects.filter(run=child)}
    assert [(steps[i].kind, steps[i].label_in, steps[i].label) for i in range(3)] == [
        ("read", 0, 2), ("llm", 2, 2), ("tool", 2, 2)]
    assert child.label == Clearance.CONFIDENTIAL and child.label_sources[0]["view"] == "customers"
    delegated, decided = RunStep.objects.filter(run=run).order_by("index")
    assert (delegated.kind, delegated.label, delegated.child_id) == ("delegate", 2, child.pk)
    assert decided.label_in == Clearance.CONFIDENTIAL and run.label == Clearance.CONFIDENTIAL
    assert run.result["label"] == "confidential"
    # Every audit event of the child names the delegation chain it acted under.
    events = AuditEvent.objects.filter(correlation_id=run.correlation_id, agent_name="analyst")
    assert events.count() >= 6 and [e.action for e in events if not e.delegation_chain] == []
    assert Action.objects.filter(agent=child.agent).exclude(delegation=child.delegation).count() == 0
    listed = client_for("viewer").get("/runs/?agent=analyst").content.decode()
    assert f'<a href="/runs/{run.pk}/">a run of lead</a>' in listed
    page = client_for("viewer").get(f"/runs/{child.pk}/").content.decode()
    assert "Delegated by" in page and "returns confidential" in page and "carries confidential" in page


def test_the_leak_is_denied_naming_its_source_and_the_same_message_without_the_data_passes(cleared, start):
    with site() as (url, hits):
        leaky = start(cleared("leak", "mailer"), f"{url}/partner")
        drive(leaky)
        assert leaky.status == "failed" and not hits  # nothing reached the outside
        step = RunStep.objects.get(run=leaky, index=1)
        assert step.status == "denied" and step.label_in == Clearance.CONFIDENTIAL
        reason = Action.objects.get(pk=step.action_id).reasons[0]
        assert reason.startswith("data flow: endpoint 127.0.0.1 is cleared for public data; this request derived "
                                 f"from customers (confidential) at step 0 of run {str(leaky.pk)[:8]}")
        clean = start(cleared("send", "announcer"), f"{url}/partner")
        drive(clean)
        assert clean.status == "succeeded", clean.error
        assert hits == ["/partner"]
    event = AuditEvent.objects.get(correlation_id=leaky.correlation_id, action="gate.tool.http")
    assert event.outcome == "denied" and event.data_classification == "confidential"
    assert event.payload["data_flow"]["receiver"] == "endpoint 127.0.0.1"


def test_a_policy_may_send_a_flow_to_a_person_instead_of_denying_it(cleared, start, policy):
    from governance.models import Approval

    policy("flows-need-security", '@escalate("security")\nforbid(principal, action == Action::"tool.http", resource)'
                                  "\nwhen { context.data_classification > context.sink_clearance };")
    with site() as (url, hits):
        run = start(cleared("leak", "mailer"), f"{url}/partner")
        assert drive(run) == "waiting"
        approval = Approval.objects.get()
        assert approval.groups == ["security"]
        action = approval.action
        assert action.outcome == "pending_approval" and not hits
        assert any(reason.startswith("data flow: endpoint 127.0.0.1") for reason in action.reasons)


def test_data_is_not_handed_to_an_agent_not_cleared_for_it(cleared, start):
    cleared("ask", "intern", clearance=Clearance.INTERNAL)
    run = start(cleared("hand_off", "lead", role_names=("orchestrator", "researcher")), "intern")
    drive(run)
    assert run.status == "failed" and not AgentRun.objects.filter(parent=run).exists()
    action = Action.objects.get(agent=run.agent, action="agent.delegate")
    assert action.outcome == "denied" and action.reasons[0].startswith(
        "data flow: agent intern is cleared for internal data; this request derived from customers (confidential)")


def test_a_bad_read_in_a_program_is_refused_before_the_gate(cleared, start):
    for which, says in [("unknown", "No such data view"), ("column", "has no column 'colour'"),
                        ("limit", "From 1 to 50 rows")]:
        run = start(cleared("bad_reads", f"reader-{which}"), which)
        drive(run)
        assert run.status == "failed" and says in run.error, run.error
        assert RunStep.objects.get(run=run).status == "refused"
        assert not Action.objects.filter(agent=run.agent).exists()
    masked = start(cleared("bad_reads", "reader-masked", clearance=Clearance.INTERNAL), "masked")
    drive(masked)
    assert "email is masked at this clearance" in masked.error


# --- the REST API cannot declare its way around it ---------------------------------------------------------------


def test_an_agent_over_the_api_carries_what_it_read_whatever_it_declares(make_agent, agent_client, customers,
                                                                          sinks, permitted):
    reader = agent_client(make_agent("reader", clearance=Clearance.CONFIDENTIAL))
    assert read(reader).json()["outcome"] == "allowed"
    body = {"action": "tool.http", "resource": "https://partner.example/upload",
            "context": {"data_classification": "public", "purpose": "sync"}}
    denied = reader.post("/api/v1/actions/", body, format="json").json()
    assert denied["outcome"] == "denied"
    assert denied["reasons"][0].startswith("data flow: endpoint partner.example is cleared for public data; this "
                                           "request derived from customers (confidential) (read over the API")
    # A model cleared for internal data only: also denied; the self-hosted one cleared for confidential: allowed.
    model = {"action": "llm.call", "context": {"input_tokens": 10, "max_output_tokens": 10}}
    assert reader.post("/api/v1/actions/", {**model, "resource": "gpt-4o-mini"}, format="json").json()["outcome"] \
        == "denied"
    # An agent that read nothing sends the same thing; one that declares more than it read is held to it.
    other = agent_client(make_agent("other", clearance=Clearance.CONFIDENTIAL))
    assert other.post("/api/v1/actions/", body, format="json").json()["outcome"] == "allowed"
    raised = {**body, "context": {"data_classification": "restricted"}}
    held = other.post("/api/v1/actions/", raised, format="json").json()
    assert held["outcome"] == "denied" and "data the agent declares (restricted)" in held["reasons"][0]


def test_an_admin_makes_a_view_serve_data_from_its_page_and_bad_input_comes_back(client_for, customers):
    admin = client_for("admin")
    page = admin.get("/data-views/").content.decode()
    assert "serves <code>file:customers.jsonl</code>" in page and "email below confidential" in page
    assert "Where data may go" in page and "endpoint <code>*</code>" in page
    base = {"classification": "2", "team": customers.team.name, "description": "", "active": "on",
            "source": "file:customers.jsonl", "columns": "id, company, email", "max_rows": "20"}
    bad = admin.post("/data-views/customers/", {**base, "masks": '{"email": "secret"}', "row_rules": "[]"})
    assert bad.status_code == 400 and "A clearance: one of public" in bad.content.decode()
    broken = admin.post("/data-views/customers/", {**base, "masks": "{not json", "row_rules": "[]"})
    assert broken.status_code == 400 and "Enter a valid JSON" in broken.content.decode()
    customers.refresh_from_db()
    assert customers.max_rows == 50 and "contact" in customers.columns  # nothing changed
    ok = admin.post("/data-views/customers/", {**base, "masks": '{"email": "confidential"}', "row_rules": "[]"})
    assert ok.status_code == 302
    customers.refresh_from_db()
    assert (customers.columns, customers.masks, customers.max_rows) == (["id", "company", "email"],
                                                                        {"email": "confidential"}, 20)
    assert AuditEvent.objects.filter(action="data_view.update").exists()


def test_no_shape_of_read_request_is_a_server_error(make_agent, agent_client, customers, permitted):
    from tests.governance.test_api_bad_input import NASTY_VALUES

    client = agent_client(make_agent("fuzzy", clearance=Clearance.CONFIDENTIAL))
    for value in NASTY_VALUES:
        for body in ({"filters": {"company": value}}, {"filters": value}, {"columns": value}, {"columns": [value]},
                     {"limit": value}, {"filters": {str(value)[:50]: "x"}}):
            answer = client.generic("POST", "/api/v1/data-views/customers/read/", json.dumps(body),
                                    content_type="application/json")
            assert answer.status_code < 500, (body, answer.content[:200])
            if answer.status_code >= 400:
                assert answer["Content-Type"] == "application/problem+json"



# --- what a review against the trust boundary found ----------------------------------------------------------


def test_a_reader_below_what_the_view_would_give_it_is_denied_whatever_the_policies_say(
        make_agent, agent_client, customers, permitted):
    public = make_agent("outsider-bot", clearance=Clearance.PUBLIC)
    answer = read(agent_client(public)).json()
    assert answer["outcome"] == "denied" and answer["rows"] == []
    assert answer["reasons"][0] == ("data flow: agent outsider-bot is cleared for public data; customers would give "
                                    "it internal data (nothing of that is masked at its clearance)")
    # Without a base classification every unmasked column is as sensitive as the view.
    customers.base_classification = None
    customers.save()
    internal = read(agent_client(make_agent("intern", clearance=Clearance.INTERNAL))).json()
    assert internal["outcome"] == "denied" and "would give it confidential data" in internal["reasons"][0]


def test_many_harmless_reads_do_not_wash_out_a_sensitive_one(make_agent, agent_client, customers, sinks, permitted,
                                                             personas, team):
    from governance.gate import request_action
    from governance.services import data_view_create

    data_view_create(name="menu", classification="public", team=team, by=personas["admin"])
    agent = make_agent("reader", clearance=Clearance.CONFIDENTIAL)
    client = agent_client(agent)
    assert read(client).json()["outcome"] == "allowed"
    for _ in range(205):
        assert request_action(agent=agent, action="data.read", resource="menu").outcome == "allowed"
    body = {"action": "tool.http", "resource": "https://partner.example/upload", "context": {}}
    denied = client.post("/api/v1/actions/", body, format="json").json()
    assert denied["outcome"] == "denied" and "customers (confidential)" in denied["reasons"][0]


def test_an_escalation_about_cost_does_not_turn_a_leak_into_an_approval(make_agent, agent_client, customers, sinks,
                                                                         permitted, policy):
    policy("http-needs-finance", '@escalate("finance")\nforbid(principal, action == Action::"tool.http", resource)'
                                 "\nwhen { context.estimated_cost_micros > 0 };")
    client = agent_client(make_agent("reader", clearance=Clearance.CONFIDENTIAL))
    read(client)
    body = {"action": "tool.http", "resource": "https://partner.example/upload", "context": {}}
    answer = client.post("/api/v1/actions/", body, format="json").json()
    assert answer["outcome"] == "denied" and answer["reasons"][0].startswith("data flow:")


def test_an_approval_granted_after_the_agent_read_more_is_denied(make_agent, agent_client, customers, sinks,
                                                                 permitted, policy, api_for):
    policy("http-needs-finance", '@escalate("finance")\nforbid(principal, action == Action::"tool.http", resource)'
                                 "\nwhen { context.estimated_cost_micros > 0 };")
    client = agent_client(make_agent("reader", clearance=Clearance.CONFIDENTIAL))
    body = {"action": "tool.http", "resource": "https://partner.example/upload", "context": {}}
    asked = client.post("/api/v1/actions/", body, format="json").json()
    assert asked["outcome"] == "pending_approval"  # it carried nothing when it asked
    read(client)  # ... then it read confidential rows
    decided = api_for("finance").post(f"/api/v1/approvals/{asked['approval']['id']}/approve/", {"comment": "ok"},
                                      format="json")
    assert decided.status_code == 200
    action = Action.objects.get(pk=asked["id"])
    assert action.outcome == "denied" and "now carries confidential data" in " ".join(action.reasons)


def test_a_childs_result_above_the_parents_clearance_is_withheld(cleared, start):
    cleared("analyse", "analyst")
    run = start(cleared("boss", "lead", clearance=Clearance.INTERNAL, role_names=("orchestrator", "researcher")),
                "onboard")
    drive(run)
    drive(AgentRun.objects.get(parent=run))
    drive(run)
    assert run.status == "failed" and "the result of analyst's run derived from customers (confidential)" in run.error
    step = RunStep.objects.get(run=run, index=0)
    assert step.status == "denied" and step.result is None
    assert run.label == Clearance.PUBLIC  # it never received what it may not see


def test_cancelling_a_parent_cancels_its_child_and_revokes_the_childs_delegation(cleared, start, personas):
    from agents.runtime.services import run_cancel

    cleared("analyse", "analyst")
    run = start(cleared("boss", "lead", role_names=("orchestrator", "researcher")), "onboard")
    assert drive(run) == "waiting" and run.status == "running"  # waits for its child, holding no worker
    child = AgentRun.objects.get(parent=run)
    run_cancel(run=run, by=personas["security"], reason="stop the team")
    child.refresh_from_db()
    assert child.status == "cancelled" and "its parent run" in child.error
    assert child.delegation.revoked_at is not None
    chains = AuditEvent.objects.filter(action="run.cancel", agent_name="analyst").values_list("delegation_chain",
                                                                                              flat=True)
    assert len(chains) == 1 and chains[0]


def test_a_source_that_cannot_answer_is_a_clear_error_not_a_crash(make_agent, agent_client, customers, permitted,
                                                                   settings, tmp_path):
    (tmp_path / "customers.jsonl").write_text('{"id": "c-1"}\n[1, 2]\n')
    answer = read(agent_client(make_agent("lead", clearance=Clearance.CONFIDENTIAL)))
    assert answer.status_code == 400 and "cannot be read" in answer.content.decode()
    action = Action.objects.get(action="data.read")
    assert action.status == "failed"
