"""The runs API and the program an agent names."""

from __future__ import annotations

import pytest

from agents.models import AgentRun
from audit.models import AuditEvent

from .conftest import PROGRAMS, drive


def test_admins_start_runs_over_the_api_and_everyone_reads_them(runner_agent, api_for):
    agent = runner_agent("steps")
    response = api_for("admin").post(f"/api/v1/agents/{agent.pk}/runs/", {"objective": "2"}, format="json")
    assert response.status_code == 201, response.json()
    body = response.json()
    assert (body["status"], body["source"], body["started_by"], body["steps"]) == ("queued", "api", "admin-user", [])
    run = AgentRun.objects.get(pk=body["id"])
    drive(run)
    detail = api_for("viewer").get(f"/api/v1/runs/{run.pk}/").json()
    assert detail["status"] == "succeeded" and detail["result"]["steps"] == 2
    assert [(s["index"], s["kind"], s["name"], s["status"], s["provider"]) for s in detail["steps"]] == [
        (0, "llm", "gpt-4o-mini", "succeeded", "simulated"), (1, "llm", "gpt-4o-mini", "succeeded", "simulated")]
    assert detail["cost_micros"] == sum(s["cost_micros"] for s in detail["steps"]) > 0
    assert all(s["action_id"] for s in detail["steps"])
    listed = api_for("finance").get("/api/v1/runs/?status=succeeded&agent=runner").json()
    assert [r["id"] for r in listed["results"]] == [str(run.pk)]
    assert api_for("finance").get("/api/v1/runs/?status=queued").json()["results"] == []
    assert api_for("viewer").get(f"/api/v1/agents/{agent.pk}/runs/").json()["count"] == 1


def test_who_may_start_and_cancel_runs(runner_agent, api_for):
    agent = runner_agent("ask")
    for persona in ("viewer", "finance", "security"):
        assert api_for(persona).post(f"/api/v1/agents/{agent.pk}/runs/", {"objective": "x"},
                                     format="json").status_code == 403
    run_id = api_for("admin").post(f"/api/v1/agents/{agent.pk}/runs/", {"objective": "x"}, format="json").json()["id"]
    assert api_for("viewer").post(f"/api/v1/runs/{run_id}/cancel/", {}, format="json").status_code == 403
    assert api_for("finance").post(f"/api/v1/runs/{run_id}/cancel/", {}, format="json").status_code == 403
    cancelled = api_for("security").post(f"/api/v1/runs/{run_id}/cancel/", {"reason": "not today"}, format="json")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["error"] == "cancelled by security-user: not today"
    assert api_for("outsider").get(f"/api/v1/runs/{run_id}/").status_code == 403


@pytest.mark.parametrize("body,field", [({}, "objective"), ({"objective": ""}, "objective"),
                                        ({"objective": "x" * 4001}, "objective"),
                                        ({"objective": "a\u0000b"}, "objective"), ([1, 2], None)])
def test_a_bad_objective_is_a_clear_400_and_starts_nothing(runner_agent, api_for, body, field):
    agent = runner_agent("ask")
    response = api_for("admin").post(f"/api/v1/agents/{agent.pk}/runs/", body, format="json")
    assert response.status_code == 400 and response["Content-Type"] == "application/problem+json"
    if field:
        assert field in str(response.json())
    assert not AgentRun.objects.exists()


def test_runs_are_refused_for_agents_that_cannot_run(make_agent, runner_agent, api_for, personas):
    from agents.services import agent_suspend

    elsewhere = make_agent("elsewhere")  # no program: it runs elsewhere
    response = api_for("admin").post(f"/api/v1/agents/{elsewhere.pk}/runs/", {"objective": "x"}, format="json")
    assert response.status_code == 400 and "has no program" in str(response.json())
    stopped = runner_agent("ask", name="stopped")
    agent_suspend(agent=stopped, by=personas["security"], reason="incident")
    response = api_for("admin").post(f"/api/v1/agents/{stopped.pk}/runs/", {"objective": "x"}, format="json")
    assert response.status_code == 409 and "stopped is suspended" in response.json()["detail"]
    unknown = "00000000-0000-0000-0000-000000000000"
    assert api_for("admin").post(f"/api/v1/agents/{unknown}/runs/", {"objective": "x"}, format="json").status_code == 404
    assert api_for("admin").get(f"/api/v1/runs/{unknown}/").status_code == 404
    assert api_for("admin").get("/api/v1/runs/?status=sleeping").status_code == 400
    assert not AgentRun.objects.exists()


def test_an_agent_names_a_program_from_the_allow_list_or_none(make_agent, api_for, team, settings):
    base = {"owner": "admin-user", "team": team.name, "roles": ["researcher"]}
    ok = api_for("admin").post("/api/v1/agents/", {**base, "name": "runs-here", "program": f"{PROGRAMS}.ask"},
                               format="json")
    assert ok.status_code == 201 and ok.json()["program"] == f"{PROGRAMS}.ask"
    for program in ("os.system", "tests.runtime.programs.nope", "builtins.eval", f"{PROGRAMS}.COUNTER"):
        refused = api_for("admin").post("/api/v1/agents/", {**base, "name": "sneaky", "program": program},
                                        format="json")
        assert refused.status_code == 400 and "program" in refused.json().get("errors", refused.json()), program
    settings.WARDEN_AGENT_PROGRAMS = [*settings.WARDEN_AGENT_PROGRAMS, f"{PROGRAMS}.COUNTER", f"{PROGRAMS}.gone"]
    for program in (f"{PROGRAMS}.COUNTER", f"{PROGRAMS}.gone"):  # on the list, but not a function / not there
        refused = api_for("admin").post("/api/v1/agents/", {**base, "name": "sneaky", "program": program},
                                        format="json")
        assert refused.status_code == 400, program
    agent_id = ok.json()["id"]
    changed = api_for("admin").patch(f"/api/v1/agents/{agent_id}/", {"program": "os.system"}, format="json")
    assert changed.status_code == 400
    assert api_for("admin").patch(f"/api/v1/agents/{agent_id}/", {"program": ""}, format="json").json()["program"] == ""
    assert AuditEvent.objects.filter(action="agent.register", agent_name="runs-here").get().payload["program"] == \
        f"{PROGRAMS}.ask"


def test_a_program_taken_off_the_allow_list_no_longer_runs(runner_agent, start, settings):
    run = start(runner_agent("ask"))
    settings.WARDEN_AGENT_PROGRAMS = []
    drive(run)
    assert run.status == "failed" and "is not an allowed program" in run.error
