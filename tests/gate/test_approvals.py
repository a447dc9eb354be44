"""The approval queue over the API: who decides, exactly once, what is approved is what runs."""

from __future__ import annotations

import datetime as dt

import pytest
from django.utils import timezone

from audit.models import AuditEvent
from audit.verify import verify
from billing.models import Budget, BudgetPeriod
from governance.approvals import approvals_expire, approvals_remind
from governance.models import Action, Approval
from tests.conftest import ask, make_user

PERMIT_ALL = "permit(principal, action, resource);"
PRICEY = {"input_tokens": 1000, "max_output_tokens": 1000, "purpose": "summarise the quarterly report"}


@pytest.fixture
def escalating(policy):
    """Calls to gpt-4o wait for finance; gpt-4o-mini is allowed."""
    policy("all", PERMIT_ALL)
    policy("gpt4o-needs-finance", '@escalate("finance")\nforbid(principal, action, resource == Model::"gpt-4o");')


@pytest.fixture
def second(db):
    """A second member of finance and of admin (two-person rule, separation of duties)."""
    return {"finance": make_user("finance-two", "finance"), "admin": make_user("admin-two", "admin")}


def api_as(user):
    from rest_framework.test import APIClient

    from governance.services import api_token_issue

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {api_token_issue(user=user, name='t')[1]}")
    return client


def pending(bot, **context):
    body = ask(bot, resource="gpt-4o", context={**PRICEY, **context}).json()
    assert body["outcome"] == "pending_approval", body
    return body


def test_an_escalation_names_its_group_and_carries_what_a_person_needs(bot, escalating, api_for):
    body = pending(bot)
    approval = Approval.objects.get(action_id=body["id"])
    assert (approval.group, approval.status, approval.required_approvals) == ("finance", "pending", 1)
    assert approval.purpose == "summarise the quarterly report"
    assert approval.request_digest == Action.objects.get(pk=body["id"]).request_digest
    assert approval.expires_at - approval.created_at == dt.timedelta(hours=24)
    detail = api_for("finance").get(f"/api/v1/approvals/{approval.pk}/").json()
    assert detail["agent"] == {"id": str(bot.agent.pk), "name": "bot", "owner": "admin-user", "team": "research",
                               "status": "active"}
    assert detail["action"]["resource"] == "gpt-4o" and detail["action"]["estimated_cost_micros"] == 12_500
    assert detail["action"]["policies"] == ["gpt4o-needs-finance"]
    assert detail["reasons"] == ["policy gpt4o-needs-finance requires approval by finance"]
    assert (detail["spend_this_month_micros"], detail["denials_this_week"]) == (0, 0)
    assert body["approval"]["id"] == str(approval.pk) and body["approval"]["status"] == "pending"


def test_finance_approves_and_what_was_asked_runs_with_its_reservation(bot, escalating, api_for, personas):
    from billing.services import budget_create

    team_budget = budget_create(scope="team", team=bot.agent.team, monthly_limit_micros=1_000_000, by=personas["finance"])
    body = pending(bot)
    approval_id = body["approval"]["id"]
    response = api_for("finance").post(f"/api/v1/approvals/{approval_id}/approve/", {"comment": "ok for Q3"}, format="json")
    assert response.status_code == 200 and response.json()["status"] == "approved"
    action = bot.get(f"/api/v1/actions/{body['id']}/").json()
    assert (action["outcome"], action["reserved"]) == ("allowed", 12_500)
    assert action["reasons"][-1] == "approved by finance-user: ok for Q3"
    assert BudgetPeriod.objects.get(budget=team_budget).reserved_micros == 12_500
    done = bot.post(f"/api/v1/actions/{body['id']}/complete/",
                    {"status": "succeeded", "usage": {"input_tokens": 1000, "output_tokens": 100}}, format="json")
    assert done.status_code == 200
    story = list(AuditEvent.objects.filter(correlation_id=action["correlation_id"]).order_by("id")
                 .values_list("action", flat=True))
    assert story == ["gate.llm.call", "approval.approve", "approval.approved"]
    assert verify().ok


def test_a_denial_says_who_and_why(bot, escalating, api_for):
    body = pending(bot)
    response = api_for("finance").post(f"/api/v1/approvals/{body['approval']['id']}/deny/",
                                       {"comment": "use the mini model"}, format="json")
    assert response.status_code == 200 and response.json()["status"] == "denied"
    action = Action.objects.get(pk=body["id"])
    assert (action.outcome, action.reserved_micros) == ("denied", 0)
    assert action.reasons[-1] == "denied by finance-user: use the mini model"
    assert bot.post(f"/api/v1/actions/{body['id']}/complete/", {"status": "succeeded"}, format="json").status_code == 409


@pytest.mark.parametrize("who,code", [("admin", "may_not_decide"), ("security", None), ("viewer", None),
                                      ("outsider", None)])
def test_only_the_group_it_is_routed_to_decides(bot, escalating, api_for, who, code):
    body = pending(bot)
    response = api_for(who).post(f"/api/v1/approvals/{body['approval']['id']}/approve/", {}, format="json")
    assert response.status_code in (403, 404)
    if code:
        assert response.json()["code"] == code
    assert Approval.objects.get(pk=body["approval"]["id"]).status == "pending"


def test_the_owner_and_the_people_in_its_delegation_chain_may_not_approve(bot, policy, api_for, personas, second):
    from agents.services import delegation_create

    policy("all", PERMIT_ALL)
    policy("admin-decides", '@escalate("admin")\nforbid(principal, action, resource == Model::"gpt-4o");')
    own = pending(bot)  # bot's owner is admin-user
    refused = api_for("admin").post(f"/api/v1/approvals/{own['approval']['id']}/approve/", {}, format="json")
    assert refused.status_code == 403 and "you own bot: separation of duties" in refused.json()["detail"]
    delegation = delegation_create(delegate=bot.agent, by_user=second["admin"], scopes=["llm.call"],
                                   expires_at=timezone.now() + dt.timedelta(hours=1))
    lent = ask(bot, resource="gpt-4o", context=PRICEY, on_behalf_of=str(delegation.pk)).json()
    refused = api_as(second["admin"]).post(f"/api/v1/approvals/{lent['approval']['id']}/approve/", {}, format="json")
    assert refused.status_code == 403 and "delegation chain" in refused.json()["detail"]
    assert api_as(second["admin"]).post(f"/api/v1/approvals/{own['approval']['id']}/approve/", {},
                                        format="json").status_code == 200


def test_separation_of_duties_can_be_switched_off_per_group(bot, policy, api_for, settings):
    settings.WARDEN_APPROVAL_SELF_APPROVE_GROUPS = ["admin"]
    policy("all", PERMIT_ALL)
    policy("admin-decides", '@escalate("admin")\nforbid(principal, action, resource == Model::"gpt-4o");')
    body = pending(bot)
    assert api_for("admin").post(f"/api/v1/approvals/{body['approval']['id']}/approve/", {},
                                 format="json").status_code == 200


def test_two_people_when_the_policy_says_so(bot, policy, api_for, second):
    policy("all", PERMIT_ALL)
    policy("two-keys", '@escalate("finance")\n@approvals("2")\nforbid(principal, action, resource == Model::"gpt-4o");')
    body = pending(bot)
    approval_id = body["approval"]["id"]
    first = api_for("finance")
    assert first.post(f"/api/v1/approvals/{approval_id}/approve/", {}, format="json").json()["status"] == "pending"
    again = first.post(f"/api/v1/approvals/{approval_id}/approve/", {}, format="json")
    assert again.status_code == 409 and again.json()["code"] == "already_approved"
    assert Action.objects.get(pk=body["id"]).outcome == "pending_approval"
    done = api_as(second["finance"]).post(f"/api/v1/approvals/{approval_id}/approve/", {}, format="json").json()
    assert done["status"] == "approved" and [d["decided_by"] for d in done["decisions"]] == ["finance-user", "finance-two"]
    assert Action.objects.get(pk=body["id"]).outcome == "allowed"


def test_bad_decisions_are_clear_errors_and_change_nothing(bot, escalating, api_for):
    body = pending(bot)
    finance = api_for("finance")
    url = f"/api/v1/approvals/{body['approval']['id']}"
    too_long = finance.post(f"{url}/approve/", {"comment": "x" * 2001}, format="json")
    assert too_long.status_code == 400 and "comment" in too_long.json()["errors"]
    assert finance.post("/api/v1/approvals/00000000-0000-0000-0000-000000000000/approve/", {}, format="json").status_code == 404
    assert finance.post("/api/v1/approvals/not-a-uuid/approve/", {}, format="json").status_code == 404
    assert Approval.objects.get(pk=body["approval"]["id"]).status == "pending"
    assert finance.post(f"{url}/deny/", {}, format="json").status_code == 200
    twice = finance.post(f"{url}/approve/", {}, format="json")
    assert twice.status_code == 409 and twice.json()["code"] == "already_decided"
    assert "already denied by finance-user" in twice.json()["detail"]
    assert Action.objects.get(pk=body["id"]).outcome == "denied"


def test_approval_after_the_budget_filled_denies(bot, escalating, api_for, personas):
    from billing.services import budget_create

    budget_create(scope="team", team=bot.agent.team, monthly_limit_micros=20_000, by=personas["finance"])
    body = pending(bot)  # gpt-4o estimate: 12,500 of 20,000: room when asked
    for _ in range(3):  # meanwhile the team spends on the cheap model: 3 x 750 reserved ...
        ask(bot, context={"input_tokens": 1000, "max_output_tokens": 1000})
    filler = ask(bot, context={"input_tokens": 20_000, "max_output_tokens": 20_000}).json()  # ... and 15,000 more
    assert filler["outcome"] == "allowed"
    response = api_for("finance").post(f"/api/v1/approvals/{body['approval']['id']}/approve/", {}, format="json")
    assert response.status_code == 200 and response.json()["status"] == "denied"
    action = Action.objects.get(pk=body["id"])
    assert action.outcome == "denied" and action.reserved_micros == 0
    assert "approved by finance-user; but the budget step at approval refused it: budget team research would be " \
           "exceeded" in action.reasons[-1]


def test_finance_approving_a_budget_escalation_lets_that_action_over_the_limit(bot, policy, api_for, personas):
    from billing.services import budget_create

    policy("all", PERMIT_ALL)
    team_budget = budget_create(scope="team", team=bot.agent.team, monthly_limit_micros=10_000, on_exceed="escalate",
                                by=personas["finance"])
    body = ask(bot, resource="gpt-4o", context=PRICEY).json()
    assert body["outcome"] == "pending_approval" and body["approval"]["group"] == "finance"
    response = api_for("finance").post(f"/api/v1/approvals/{body['approval']['id']}/approve/", {}, format="json")
    assert response.json()["status"] == "approved"
    assert BudgetPeriod.objects.get(budget=team_budget).reserved_micros == 12_500
    assert ask(bot, resource="gpt-4o", context=PRICEY).json()["outcome"] == "pending_approval"  # the next one asks again


def test_unanswered_requests_expire_into_denials_and_groups_are_reminded_first(
        bot, escalating, personas, mailoutbox, django_capture_on_commit_callbacks, eager_tasks):
    personas["finance"].email = "finance@example.test"
    personas["finance"].save()
    body = pending(bot)
    approval = Approval.objects.get(pk=body["approval"]["id"])
    with django_capture_on_commit_callbacks(execute=True):
        assert approvals_remind(now=approval.expires_at - dt.timedelta(minutes=30)) == 1
        assert approvals_remind(now=approval.expires_at - dt.timedelta(minutes=20)) == 0  # once
    reminder = next(m for m in mailoutbox if "Reminder" in m.subject)
    assert reminder.to == ["finance@example.test"] and f"/approvals/{approval.pk}/" in reminder.body
    assert approvals_expire(now=approval.expires_at - dt.timedelta(seconds=1)) == 0
    assert approvals_expire(now=approval.expires_at + dt.timedelta(seconds=1)) == 1
    approval.refresh_from_db()
    action = Action.objects.get(pk=body["id"])
    assert (approval.status, action.outcome) == ("expired", "denied")
    assert "expired" in action.reasons[-1]
    assert AuditEvent.objects.filter(action="approval.expired", correlation_id=action.correlation_id).count() == 1


def test_a_policy_can_say_how_long_its_requests_wait(bot, policy):
    policy("all", PERMIT_ALL)
    policy("quick", '@escalate("finance")\n@expires("30m")\nforbid(principal, action, resource == Model::"gpt-4o");')
    approval = Approval.objects.get(pk=pending(bot)["approval"]["id"])
    assert approval.expires_at - approval.created_at == dt.timedelta(minutes=30)


def test_what_is_approved_is_what_runs(bot, escalating, api_for):
    body = ask(bot, resource="gpt-4o", context=PRICEY, idempotency_key="plan-1").json()
    bigger = ask(bot, resource="gpt-4o", context={**PRICEY, "max_output_tokens": 100_000}, idempotency_key="plan-1")
    assert bigger.status_code == 409  # the request cannot be changed under its approval
    changed = ask(bot, resource="gpt-4o", context={**PRICEY, "max_output_tokens": 100_000}).json()
    assert changed["outcome"] == "pending_approval" and changed["approval"]["id"] != body["approval"]["id"]
    api_for("finance").post(f"/api/v1/approvals/{body['approval']['id']}/approve/", {}, format="json")
    assert Action.objects.get(pk=changed["id"]).outcome == "pending_approval"  # judged on its own
    replay = ask(bot, resource="gpt-4o", context=PRICEY, idempotency_key="plan-1").json()
    assert replay["id"] == body["id"] and replay["outcome"] == "allowed"


def test_suspending_an_agent_withdraws_what_it_waits_for(bot, escalating, api_for, personas):
    from agents.services import agent_suspend

    body = pending(bot)
    agent_suspend(agent=bot.agent, by=personas["security"], reason="drill")
    approval = Approval.objects.get(pk=body["approval"]["id"])
    assert approval.status == "denied" and approval.decided_by is None
    assert Action.objects.get(pk=body["id"]).reasons[-1] == "withdrawn: agent bot was suspended: drill"
    late = api_for("finance").post(f"/api/v1/approvals/{approval.pk}/approve/", {}, format="json")
    assert late.status_code == 409


def test_an_approval_for_an_agent_suspended_meanwhile_denies(bot, escalating, api_for, personas):
    from agents.models import Agent

    body = pending(bot)
    Agent.objects.filter(pk=bot.agent.pk).update(status="suspended")  # as if the withdrawal had not run yet
    response = api_for("finance").post(f"/api/v1/approvals/{body['approval']['id']}/approve/", {}, format="json")
    assert response.json()["status"] == "denied"
    assert "bot is suspended now" in Action.objects.get(pk=body["id"]).reasons[-1]


def test_new_requests_reach_the_group_by_email_and_a_signed_webhook(
        bot, escalating, personas, settings, mailoutbox, django_capture_on_commit_callbacks, eager_tasks,
        webhook_receiver):
    import hmac
    import json

    webhook_url, received = webhook_receiver
    settings.WARDEN_APPROVAL_WEBHOOK_URL = f"{webhook_url}/chat"
    settings.WARDEN_APPROVAL_WEBHOOK_SECRET = "chat-secret"
    personas["finance"].email = "finance@example.test"
    personas["finance"].save()
    with django_capture_on_commit_callbacks(execute=True):
        body = pending(bot)
    mail = mailoutbox[-1]
    assert mail.to == ["finance@example.test"] and "approval needed by finance: bot asks for llm.call gpt-4o" in mail.subject
    assert f"/approvals/{body['approval']['id']}/" in mail.body and "summarise the quarterly report" in mail.body
    payload = json.loads(received["body"])
    expected = "sha256=" + hmac.new(b"chat-secret", received["body"], "sha256").hexdigest()
    assert received["signature"] == expected
    assert payload["event"] == "approval.created" and payload["approval"]["agent"] == "bot"
    assert payload["text"].startswith("approval needed by finance")


def test_the_queue_over_the_api_lists_what_the_caller_may_see(bot, policy, api_for):
    policy("all", PERMIT_ALL)
    policy("fin", '@escalate("finance")\nforbid(principal, action, resource == Model::"gpt-4o");')
    policy("sec", '@escalate("security")\nforbid(principal, action, resource == Model::"gpt-4o-mini");')
    pending(bot)
    ask(bot, context=PRICEY)
    assert [a["group"] for a in api_for("finance").get("/api/v1/approvals/?status=pending").json()["results"]] == ["finance"]
    assert [a["group"] for a in api_for("security").get("/api/v1/approvals/").json()["results"]] == ["security"]
    assert len(api_for("admin").get("/api/v1/approvals/?status=pending").json()["results"]) == 2
    assert api_for("admin").get("/api/v1/approvals/?status=approved").json()["results"] == []
    assert api_for("finance").get("/api/v1/approvals/?status=maybe").status_code == 400
    assert api_for("viewer").get("/api/v1/approvals/").status_code == 403


def test_an_agent_asks_for_more_budget_and_finance_raises_it_at_once(make_agent, agent_client, api_for, personas, team):
    from billing.services import budget_create

    agent = make_agent("saver")
    client = agent_client(agent)
    team_budget = budget_create(scope="team", team=team, monthly_limit_micros=1_000_000, by=personas["finance"])
    other = budget_create(scope="agent", agent=make_agent("other"), monthly_limit_micros=1_000, by=personas["finance"])
    refused = client.post(f"/api/v1/budgets/{other.pk}/increase-requests/",
                          {"monthly_limit_micros": 2_000, "reason": "more"}, format="json")
    assert refused.status_code == 404  # a budget that does not cover it is none of its business
    assert client.post(f"/api/v1/budgets/{team_budget.pk}/increase-requests/",
                       {"monthly_limit_micros": 500, "reason": "less?"}, format="json").status_code == 400
    assert client.post(f"/api/v1/budgets/{team_budget.pk}/increase-requests/",
                       {"monthly_limit_micros": 2.5e6, "reason": "x"}, format="json").status_code == 400
    asked = client.post(f"/api/v1/budgets/{team_budget.pk}/increase-requests/",
                        {"monthly_limit_micros": 3_000_000, "reason": "month-end reports"}, format="json")
    assert asked.status_code == 201, asked.json()
    detail = asked.json()
    assert set(detail) == {"id", "status", "group", "requested_limit_micros", "required_approvals", "created_at",
                           "expires_at"}  # where it stands: nothing of the budgets' figures
    assert detail["group"] == "finance" and detail["requested_limit_micros"] == 3_000_000
    assert api_for("finance").get(f"/api/v1/approvals/{detail['id']}/").json()["budget_increase"]["requested_by"] == \
        "agent:saver"
    assert client.post(f"/api/v1/budgets/{team_budget.pk}/increase-requests/",
                       {"monthly_limit_micros": 4_000_000, "reason": "again"}, format="json").status_code == 409
    approved = api_for("finance").post(f"/api/v1/approvals/{detail['id']}/approve/", {"comment": "fine"}, format="json")
    assert approved.json()["status"] == "approved"
    assert Budget.objects.get(pk=team_budget.pk).monthly_limit_micros == 3_000_000
    assert AuditEvent.objects.filter(action="budget.update", payload__monthly_limit_micros__to=3_000_000).count() == 1


def test_an_owner_asks_in_person_and_may_not_approve_it(make_agent, api_for, personas, team, second):
    from billing.services import budget_create

    make_agent("mine")  # owned by admin-user
    team_budget = budget_create(scope="team", team=team, monthly_limit_micros=1_000_000, by=personas["finance"])
    assert api_for("viewer").post(f"/api/v1/budgets/{team_budget.pk}/increase-requests/",
                                  {"monthly_limit_micros": 2_000_000, "reason": "x"}, format="json").status_code == 403
    asked = api_for("admin").post(f"/api/v1/budgets/{team_budget.pk}/increase-requests/",
                                  {"monthly_limit_micros": 2_000_000, "reason": "launch week"}, format="json").json()
    # an owner who is also in finance still may not approve their own request
    from django.contrib.auth.models import Group

    personas["admin"].groups.add(Group.objects.get(name="finance"))
    refused = api_as(personas["admin"]).post(f"/api/v1/approvals/{asked['id']}/approve/", {}, format="json")
    assert refused.status_code == 403 and "you asked for this increase" in refused.json()["detail"]


def test_an_approved_action_keeps_its_reservation_for_the_full_timeout(bot, escalating, api_for, personas):
    from billing.services import budget_create
    from governance.gate import actions_expire

    team_budget = budget_create(scope="team", team=bot.agent.team, monthly_limit_micros=1_000_000, by=personas["finance"])
    body = pending(bot)
    Action.objects.filter(pk=body["id"]).update(created_at=timezone.now() - dt.timedelta(minutes=40))  # waited long
    api_for("finance").post(f"/api/v1/approvals/{body['approval']['id']}/approve/", {}, format="json")
    assert actions_expire() == 0  # its 15 minutes start at the approval, not at the request
    assert Action.objects.get(pk=body["id"]).status == "decided"
    assert BudgetPeriod.objects.get(budget=team_budget).reserved_micros == 12_500


def test_nothing_unpriced_waits_for_a_person(bot, policy, personas):
    policy("all", PERMIT_ALL)
    policy("held", '@escalate("admin")\nforbid(principal, action, resource == Tool::"ocr");')
    from agents.services import agent_update

    agent_update(agent=bot.agent, by=personas["admin"], allowed_tools=["search", "ocr"])
    body = ask(bot, "tool.call", "ocr", {}).json()
    assert body["outcome"] == "denied" and "tool ocr has no price" in body["reasons"][0]
    assert not Approval.objects.exists()


def test_an_approval_waives_only_the_budget_it_was_asked_about(bot, policy, api_for, personas, second):
    from billing.services import budget_create

    policy("all", PERMIT_ALL)
    policy("fin", '@escalate("finance")\nforbid(principal, action, resource == Model::"gpt-4o");')
    # The team budget escalates when exceeded and wants two approvers; it is already too small for this call.
    budget_create(scope="team", team=bot.agent.team, monthly_limit_micros=10_000, on_exceed="escalate",
                  by=personas["finance"])
    Budget.objects.filter(scope="team").update(approvals_required=2)
    body = pending(bot)  # held by the policy first: the budget was never asked
    approval = Approval.objects.get(pk=body["approval"]["id"])
    assert approval.budget_ids == [] and approval.required_approvals == 1
    response = api_for("finance").post(f"/api/v1/approvals/{approval.pk}/approve/", {}, format="json").json()
    assert response["status"] == "denied"  # the policy's approver did not waive a budget nobody asked about
    assert "budget team research would be exceeded" in Action.objects.get(pk=body["id"]).reasons[-1]


def test_a_budget_escalation_needs_the_budgets_approvers(bot, policy, api_for, personas, second):
    from billing.services import budget_create

    policy("all", PERMIT_ALL)
    team_budget = budget_create(scope="team", team=bot.agent.team, monthly_limit_micros=10_000, on_exceed="escalate",
                                by=personas["finance"])
    Budget.objects.filter(pk=team_budget.pk).update(approvals_required=2, approval_ttl_hours=2)
    body = pending(bot)
    approval = Approval.objects.get(pk=body["approval"]["id"])
    assert (approval.budget_ids, approval.required_approvals) == ([team_budget.pk], 2)
    assert approval.expires_at - approval.created_at == dt.timedelta(hours=2)
    assert api_for("finance").post(f"/api/v1/approvals/{approval.pk}/approve/", {}, format="json").json()["status"] == "pending"
    assert api_as(second["finance"]).post(f"/api/v1/approvals/{approval.pk}/approve/", {}, format="json").json()["status"] == "approved"


def test_every_group_an_escalation_names_must_approve(bot, policy, api_for, personas):
    from django.contrib.auth.models import Group

    policy("all", PERMIT_ALL)
    policy("sec", '@escalate("security")\nforbid(principal, action, resource == Model::"gpt-4o");')
    policy("fin", '@escalate("finance")\nforbid(principal, action, resource == Model::"gpt-4o");')
    body = pending(bot)
    approval = Approval.objects.get(pk=body["approval"]["id"])
    assert sorted(approval.groups) == ["finance", "security"] and approval.required_approvals == 2
    both = make_user("both-hats", "finance")
    both.groups.add(Group.objects.get(name="security"))
    assert api_as(both).post(f"/api/v1/approvals/{approval.pk}/approve/", {}, format="json").json()["status"] == "pending"
    again = api_as(both).post(f"/api/v1/approvals/{approval.pk}/approve/", {}, format="json")
    assert again.status_code == 409  # one person cannot be both groups' approver
    assert api_for("security").post(f"/api/v1/approvals/{approval.pk}/approve/", {}, format="json").json()["status"] == "approved"
    assert [d.group for d in approval.decisions.order_by("id")] == ["finance", "security"]


def test_every_named_group_is_written_to_and_reminders_skip_who_has_decided(
        bot, policy, personas, mailoutbox, django_capture_on_commit_callbacks, eager_tasks):
    from governance.approval_notices import email

    policy("all", PERMIT_ALL)
    policy("sec", '@escalate("security")\nforbid(principal, action, resource == Model::"gpt-4o");')
    policy("fin", '@escalate("finance")\nforbid(principal, action, resource == Model::"gpt-4o");')
    for name in ("finance", "security", "viewer"):
        personas[name].email = f"{name}@example.test"
        personas[name].save()
    with django_capture_on_commit_callbacks(execute=True):
        body = pending(bot)
    mail = mailoutbox[-1]
    assert sorted(mail.to) == ["finance@example.test", "security@example.test"]
    assert "approval needed by finance and security" in mail.subject or "approval needed by security and finance" in mail.subject
    approval = Approval.objects.get(pk=body["approval"]["id"])
    api_for_finance = api_as(personas["finance"])
    assert api_for_finance.post(f"/api/v1/approvals/{approval.pk}/approve/", {}, format="json").json()["status"] == "pending"
    assert email(str(approval.pk), "reminder") == 1
    assert mailoutbox[-1].to == ["security@example.test"] and mailoutbox[-1].subject.startswith("[Warden] Reminder:")


def test_the_owner_of_an_agent_in_the_delegation_chain_may_not_approve(make_agent, agent_client, policy, prices,
                                                                       api_for, personas, second):
    from agents.services import delegation_create
    from governance.models import Role

    Role.objects.create(name="lender", scopes=["llm.call", "agent.delegate"])
    policy("all", PERMIT_ALL)
    policy("admin-decides", '@escalate("admin")\nforbid(principal, action, resource == Model::"gpt-4o");')
    lender = make_agent("lender", role_names=["lender"])  # owned by admin-user
    borrower = make_agent("borrower", role_names=[], allowed_models=["gpt-4o"])
    borrower.owner = second["admin"]
    borrower.save()
    delegation = delegation_create(delegate=borrower, by_agent=lender, scopes=["llm.call"],
                                   expires_at=timezone.now() + dt.timedelta(hours=1))
    body = ask(agent_client(borrower), resource="gpt-4o", context=PRICEY, on_behalf_of=str(delegation.pk)).json()
    refused = api_for("admin").post(f"/api/v1/approvals/{body['approval']['id']}/approve/", {}, format="json")
    assert refused.status_code == 403 and "you own lender, in borrower's delegation chain" in refused.json()["detail"]


def test_a_revoked_key_or_delegation_at_approval_time_denies(bot, escalating, api_for, personas):
    from agents.models import AgentKey
    from agents.services import agent_key_revoke

    body = pending(bot)
    agent_key_revoke(key=AgentKey.objects.get(agent=bot.agent), by=personas["admin"], reason="leaked")
    response = api_for("finance").post(f"/api/v1/approvals/{body['approval']['id']}/approve/", {}, format="json")
    assert response.json()["status"] == "denied"
    assert "key it asked with is revoked" in Action.objects.get(pk=body["id"]).reasons[-1]
