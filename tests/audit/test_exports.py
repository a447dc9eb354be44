"""Export jobs: the page's filter, written by a worker with progress, downloadable by the asker only."""

import csv
import datetime as dt
import io
import json

import pytest
from django.test import Client
from django.utils import timezone

from audit import exports
from audit.models import AuditEvent, AuditExport
from audit.tasks import export_task, exports_sweep_task
from tests.conftest import make_user

from .test_timeline import decisions  # noqa: F401 (fixture)


@pytest.fixture
def export_dir(tmp_path, settings):
    settings.WARDEN_EXPORT_DIR = tmp_path
    return tmp_path


def start_export(client, django_capture_on_commit_callbacks, **data):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = client.post("/audit/exports/", data)
    return response, callbacks


def test_an_export_is_queued_written_by_the_worker_and_downloaded(client_for, decisions, export_dir,
                                                                   django_capture_on_commit_callbacks, personas):
    client = client_for("security")
    response, callbacks = start_export(client, django_capture_on_commit_callbacks, format="csv", outcome="denied")
    job = AuditExport.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/audit/exports/{job.pk}/"
    # the worker's task is sent when the request commits (beside the live timeline's push)
    assert [cb.__qualname__ for cb in callbacks] == ["publish_on_commit.<locals>.<lambda>", "export_request.<locals>.<lambda>"]
    assert (job.status, job.filters, job.requested_by) == ("queued", {"outcome": "denied"}, personas["security"])
    assert AuditEvent.objects.filter(action="audit.export", actor_name="security-user",
                                     payload__filters={"outcome": "denied"}).exists()
    page = client.get(f"/audit/exports/{job.pk}/").content.decode()
    assert "Queued: waiting for a worker" in page and 'hx-trigger="every 1s"' in page

    assert export_task(str(job.pk)) == 1  # what the worker runs

    job.refresh_from_db()
    denied = AuditEvent.objects.filter(outcome="denied")
    assert (job.status, job.total, job.written) == ("done", denied.count(), denied.count())
    fragment = client.get(f"/audit/exports/{job.pk}/", HTTP_HX_REQUEST="true").content.decode()
    assert "Done: 1 events" in fragment and "hx-trigger" not in fragment and "/download" in fragment
    download = client.get(f"/audit/exports/{job.pk}/download")
    assert download.status_code == 200 and "attachment" in download["Content-Disposition"]
    rows = list(csv.reader(io.StringIO(b"".join(download.streaming_content).decode())))
    assert rows[0][:3] == ["id", "occurred_at", "actor_type"]
    assert [int(row[0]) for row in rows[1:]] == list(denied.values_list("id", flat=True))
    assert job.pk.hex[:8] not in download["Content-Disposition"]  # a readable name, not the job id
    assert export_task(str(job.pk)) == 1  # delivered twice: nothing is written again


def test_progress_is_recorded_while_the_file_is_written(client_for, decisions, export_dir, monkeypatch,
                                                        django_capture_on_commit_callbacks, bot):
    from tests.conftest import ask

    for _ in range(12):
        ask(bot, resource="gpt-4o-mini")
    client = client_for("security")
    start_export(client, django_capture_on_commit_callbacks, format="jsonl", agent="bot")
    job = AuditExport.objects.get()
    seen = []
    original = exports.export_lines

    def watching(rows, fmt):
        for line in original(rows, fmt):
            seen.append(AuditExport.objects.values_list("status", "written", "total").get(pk=job.pk))
            yield line

    monkeypatch.setattr(exports, "export_lines", watching)
    monkeypatch.setattr(exports, "PROGRESS_EVERY", 0)
    original_rows = exports.export_rows
    monkeypatch.setattr(exports, "export_rows", lambda filters, user: original_rows(filters, user=user, page=5))
    export_task(str(job.pk))

    total = AuditEvent.objects.filter(agent_name="bot").count()
    assert all(status == "running" and seen_total == total for status, _, seen_total in seen)
    assert [written for _, written, _ in seen] == list(range(0, total))  # one step per event, never backwards
    lines = (export_dir / f"{job.pk}.jsonl").read_text().splitlines()
    assert [json.loads(line)["agent_name"] for line in lines] == ["bot"] * total


def test_only_the_asker_sees_and_downloads_an_export(client_for, decisions, export_dir,
                                                      django_capture_on_commit_callbacks):
    start_export(client_for("security"), django_capture_on_commit_callbacks, format="csv")
    job = AuditExport.objects.get()
    export_task(str(job.pk))
    colleague = Client()
    colleague.force_login(make_user("second-security", "security"))
    assert colleague.get(f"/audit/exports/{job.pk}/").status_code == 404
    assert colleague.get(f"/audit/exports/{job.pk}/download").status_code == 404
    assert str(job.pk) not in colleague.get("/audit/exports/").content.decode()
    for persona in ("admin", "finance", "viewer", "outsider"):
        client = client_for(persona)
        assert client.post("/audit/exports/", {"format": "csv"}).status_code == 403
        assert client.get(f"/audit/exports/{job.pk}/download").status_code == 403
    assert AuditExport.objects.count() == 1


@pytest.mark.parametrize("data, message", [
    ({"format": "xml"}, "Export as csv or jsonl."),
    ({"format": "csv", "since": "yesterday"}, "since:"),
    ({"format": "csv", "since": "2026-11-02T00:00", "until": "2026-11-01T00:00"}, "after"),
])
def test_bad_export_requests_are_clear_errors(client_for, decisions, export_dir, data, message):
    response = client_for("security").post("/audit/exports/", data)
    assert response.status_code == 400 and 'role="alert"' in response.content.decode()
    assert message in response.content.decode()
    assert not AuditExport.objects.exists()


def test_a_failed_export_says_why(client_for, decisions, export_dir, monkeypatch, django_capture_on_commit_callbacks):
    client = client_for("security")
    start_export(client, django_capture_on_commit_callbacks, format="csv")
    job = AuditExport.objects.get()

    def broken(filters, user):
        raise OSError("disk full")

    monkeypatch.setattr(exports, "export_rows", broken)
    with pytest.raises(OSError):
        export_task(str(job.pk))
    job.refresh_from_db()
    assert job.status == "failed" and job.error == "OSError: disk full"
    assert "Failed: OSError: disk full" in client.get(f"/audit/exports/{job.pk}/").content.decode()
    assert client.get(f"/audit/exports/{job.pk}/download").status_code == 404


def test_export_files_expire(client_for, decisions, export_dir, django_capture_on_commit_callbacks, settings):
    client = client_for("security")
    start_export(client, django_capture_on_commit_callbacks, format="csv")
    job = AuditExport.objects.get()
    export_task(str(job.pk))
    assert exports_sweep_task() == 0
    assert exports.exports_sweep(now=timezone.now() + dt.timedelta(hours=settings.WARDEN_EXPORT_TTL_HOURS + 1)) == 1
    job.refresh_from_db()
    assert job.status == "expired" and not list(export_dir.iterdir())
    assert client.get(f"/audit/exports/{job.pk}/download").status_code == 404
    assert "Expired" in client.get(f"/audit/exports/{job.pk}/").content.decode()


def test_an_export_no_worker_finished_is_marked_failed(client_for, decisions, export_dir, settings,
                                                       django_capture_on_commit_callbacks):
    client = client_for("security")
    start_export(client, django_capture_on_commit_callbacks, format="jsonl")
    job = AuditExport.objects.get()
    assert exports.exports_sweep() == 0 and AuditExport.objects.get().status == "queued"
    exports.exports_sweep(now=timezone.now() + dt.timedelta(hours=settings.WARDEN_EXPORT_TTL_HOURS + 1))
    job.refresh_from_db()
    assert job.status == "failed" and "no worker finished it" in job.error
    assert 'hx-trigger="every 1s"' not in client.get(f"/audit/exports/{job.pk}/").content.decode()  # polling stops
