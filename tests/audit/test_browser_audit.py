"""Security's timeline in a real browser, against the real ASGI server: live rows, filters, exports."""

import csv
import io

import pytest

from audit.models import AuditExport
from audit.tasks import export_task
from tests.browser import SHOTS, asgi_server, chromium, sign_in
from tests.conftest import PASSWORD, ask

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def hosts(settings, tmp_path):
    settings.ALLOWED_HOSTS = ["127.0.0.1", "testserver"]
    settings.WARDEN_EXPORT_DIR = tmp_path


def test_decisions_appear_live_on_a_filtered_timeline_and_export_with_progress(personas, bot, policy):
    policy("all", "permit(principal, action, resource);")
    policy("no-4o", 'forbid(principal, action, resource == Model::"gpt-4o");')
    ask(bot, resource="gpt-4o")  # one denial before the page opens
    with asgi_server() as url, chromium() as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        sign_in(page, url, "security-user", PASSWORD)
        page.wait_for_url(f"{url}/")
        page.goto(f"{url}/audit/?outcome=denied")
        page.wait_for_selector("#live-status:has-text('live')")
        assert page.locator("#event-rows tr[data-id]").count() == 1

        ask(bot, resource="gpt-4o-mini")  # allowed: the filter keeps it off this page
        ask(bot, resource="gpt-4o", correlation_id="live-check-0001")  # denied: arrives without a reload
        page.wait_for_selector("#event-rows tr.fresh:has-text('forbidden by policy no-4o')", timeout=5000)
        rows = page.locator("#event-rows tr[data-id]")
        assert rows.count() == 2 and "live-check" in rows.first.inner_html()
        assert "permitted by policy all" not in page.inner_text("#event-rows")
        page.screenshot(path=str(SHOTS / "audit-live.png"), full_page=True)

        page.click("main button:has-text('Export CSV')")
        page.wait_for_selector("text=Queued: waiting for a worker")
        job = AuditExport.objects.get()
        assert job.filters == {"outcome": "denied"}
        export_task(str(job.pk))  # the worker's turn; the page polls and shows the result
        page.wait_for_selector("#export-progress[data-status='done']", timeout=5000)
        assert "Done: 2 events" in page.inner_text("#export-progress")
        page.screenshot(path=str(SHOTS / "audit-export.png"), full_page=True)
        with page.expect_download() as download_info:
            page.click("#export-progress a:has-text('Download')")
        rows = list(csv.reader(io.StringIO(open(download_info.value.path()).read())))
        assert len(rows) == 3 and {row[8] for row in rows[1:]} == {"denied"}
