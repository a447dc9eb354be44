"""Pages of runs: the list and a run's page (live), starting, cancelling and scheduling from the browser."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from asgiref.testing import ApplicationCommunicator
from django.db import connection
from django.utils import timezone

from agents.models import AgentRun, RunSchedule
from audit.models import AuditEvent
from tests.sockets import run_scenario

from .conftest import drive


def test_the_runs_page_lists_runs_for_everyone_who_may_see_them(runner_agent, start, client_for):
    run = start(runner_agent("steps"), "2")
    drive(run)
    page = client_for("viewer").get("/runs/").content.decode()
    assert f'data-id="{run.pk}"' in page and "succeeded" in page and "runner" in page
    rows = client_for("viewer").get("/runs/?status=succeeded&agent=runner", HTTP_HX_REQUEST="true").content.decode()
    assert f'data-id="{run.pk}"' in rows and "<html" not in rows
    assert f'data-id="{run.pk}"' not in client_for("viewer").get("/runs/?status=failed").content.decode()
    assert client_for("viewer").get("/runs/?status=sleeping").status_code == 400
    assert client_for("outsider").get("/runs/").status_code == 403


def test_a_runs_page_shows_its_steps_plan_and_cost_and_refreshes_its_live_part(runner_agent, start, client_for):
    run = start(runner_agent("planned"), "compare vector databases")
    drive(run)
    page = client_for("finance").get(f"/runs/{run.pk}/").content.decode()
    for fact in ("compare vector databases", "Plan", "simulated provider", "gpt-4o-mini", "succeeded",
                 run.correlation_id[:10]):
        assert fact in page, fact
    assert "Cancel run" not in page  # finished, and finance may not cancel anyway
    live = client_for("finance").get(f"/runs/{run.pk}/?part=live", HTTP_HX_REQUEST="true").content.decode()
    assert 'id="run-status"' in live and "<html" not in live
    assert client_for("finance").get("/runs/00000000-0000-0000-0000-000000000000/").status_code == 404


def test_an_admin_starts_a_run_from_the_agent_page_and_bad_input_comes_back_with_the_error(runner_agent, client_for):
    agent = runner_agent("ask")
    page = client_for("admin").get(f"/agents/{agent.pk}/").content.decode()
    assert "Start a run" in page and "tests.runtime.programs.ask" in page
    assert "Start a run" not in client_for("viewer").get(f"/agents/{agent.pk}/").content.decode()
    empty = client_for("admin").post(f"/runs/start/{agent.pk}/", {"objective": "   "})
    assert empty.status_code == 400 and "This field is required." in empty.content.decode()
    assert 'id="dlg-run" class="card" open' in empty.content.decode()
    assert client_for("viewer").post(f"/runs/start/{agent.pk}/", {"objective": "x"}).status_code == 403
    assert not AgentRun.objects.exists()
    started = client_for("admin").post(f"/runs/start/{agent.pk}/", {"objective": "summarise the week"})
    run = AgentRun.objects.get()
    assert started.status_code == 302 and started["Location"] == f"/runs/{run.pk}/"
    assert (run.source, run.started_by.username, run.status) == ("browser", "admin-user", "queued")


def test_security_cancels_a_run_from_its_page(runner_agent, start, client_for):
    run = start(runner_agent("ask"))
    assert "Cancel run" in client_for("security").get(f"/runs/{run.pk}/").content.decode()
    assert client_for("viewer").post(f"/runs/{run.pk}/cancel/", {"reason": "x"}).status_code == 403
    response = client_for("security").post(f"/runs/{run.pk}/cancel/", {"reason": "runaway costs"})
    assert response.status_code == 302
    run.refresh_from_db()
    assert run.status == "cancelled" and run.error == "cancelled by security-user: runaway costs"
    again = client_for("security").post(f"/runs/{run.pk}/cancel/", {}, follow=True)
    assert "This run is cancelled already." in again.content.decode()


def test_schedules_start_runs_on_beat_and_never_two_at_once(runner_agent, client_for, settings):
    from agents.runtime.services import runs_schedule

    agent = runner_agent("ask")
    bad = client_for("admin").post(f"/runs/schedules/{agent.pk}/", {"objective": "daily digest", "every_minutes": 0})
    assert bad.status_code == 400 and "greater than or equal to 1" in bad.content.decode()
    assert client_for("admin").post(f"/runs/schedules/{agent.pk}/", {"objective": "daily digest",
                                                                    "every_minutes": 60}).status_code == 302
    schedule = RunSchedule.objects.get()
    assert runs_schedule() == 1
    run = AgentRun.objects.get()
    assert (run.source, run.schedule_id, run.objective) == ("schedule", schedule.pk, "daily digest")
    schedule.refresh_from_db()
    assert schedule.next_run_at > timezone.now() + dt.timedelta(minutes=59)
    RunSchedule.objects.filter(pk=schedule.pk).update(next_run_at=timezone.now())
    assert runs_schedule() == 0  # the last one has not finished: this turn is skipped
    drive(run)
    RunSchedule.objects.filter(pk=schedule.pk).update(next_run_at=timezone.now())
    assert runs_schedule() == 1
    client_for("admin").post(f"/runs/schedules/{schedule.pk}/toggle/")
    RunSchedule.objects.filter(pk=schedule.pk).update(next_run_at=timezone.now())
    AgentRun.objects.filter(status="queued").update(status="cancelled")
    assert runs_schedule() == 0  # paused
    assert AuditEvent.objects.filter(action="run.schedule.disable").count() == 1


def test_demo_schedules_stop_when_demo_traffic_is_off(runner_agent, personas, settings):
    from agents.runtime.services import runs_schedule, schedule_create

    schedule_create(agent=runner_agent("ask"), objective="demo", interval_seconds=60, by=personas["admin"], demo=True)
    settings.WARDEN_DEMO_TRAFFIC = False
    assert runs_schedule() == 0
    settings.WARDEN_DEMO_TRAFFIC = True
    assert runs_schedule() == 1


@pytest.fixture
def hosts(settings):
    settings.ALLOWED_HOSTS = ["testserver", "127.0.0.1"]


@pytest.mark.django_db(transaction=True)
def test_the_live_run_socket_says_which_run_changed_and_stops_for_someone_who_lost_access(
        runner_agent, start, personas, hosts):
    from asgiref.sync import sync_to_async
    from channels.routing import URLRouter
    from django.contrib.auth.models import Group
    from django.contrib.sessions.backends.db import SessionStore

    from governance.routing import websocket_urlpatterns

    run = start(runner_agent("steps"), "2")
    viewer = personas["viewer"]
    session = SessionStore()
    session.create()

    def socket_for(path, user):
        scope = {"type": "websocket", "path": path, "query_string": b"", "headers": [], "subprotocols": [],
                 "user": user, "session": session}
        return ApplicationCommunicator(URLRouter(websocket_urlpatterns), scope)

    async def scenario():
        outsider = socket_for(f"/ws/runs/{run.pk}/", personas["outsider"])
        await outsider.send_input({"type": "websocket.connect"})
        assert await outsider.receive_output(3) == {"type": "websocket.close", "code": 4403}
        unknown = socket_for("/ws/runs/00000000-0000-0000-0000-000000000000/", viewer)
        await unknown.send_input({"type": "websocket.connect"})
        assert await unknown.receive_output(3) == {"type": "websocket.close", "code": 4404}

        socket = socket_for(f"/ws/runs/{run.pk}/", viewer)
        await socket.send_input({"type": "websocket.connect"})
        assert (await socket.receive_output(3))["type"] == "websocket.accept"
        await sync_to_async(drive)(run)
        heard = []
        while not await socket.receive_nothing(timeout=2):  # what the run's progress said, until it is quiet
            heard.append(json.loads((await socket.receive_output(1))["text"]))
        assert {item["id"] for item in heard} == {str(run.pk)}
        assert {item["step"] for item in heard if item["step"] is not None} == {0, 1}
        assert heard[-1]["status"] == "succeeded"
        await sync_to_async(lambda: viewer.groups.remove(Group.objects.get(name="viewer")))()
        await sync_to_async(lambda: AgentRun.objects.filter(pk=run.pk).update(status="running"))()
        await sync_to_async(drive)(run)
        assert await socket.receive_output(5) == {"type": "websocket.close", "code": 4403}
        await sync_to_async(lambda: connection.close())()  # the executor thread's own connection

    try:
        run_scenario(scenario())
    finally:
        connection.close()
