import pytest

from governance.models import DataView
from tests.browser import SHOTS, chromium, sign_in
from tests.conftest import PASSWORD

pytestmark = pytest.mark.browser


def test_an_admin_registers_a_view_and_a_viewer_reads_the_registry(live_server, personas, team):
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        sign_in(page, live_server.url, "admin-user", PASSWORD)
        page.wait_for_url(f"{live_server.url}/")
        page.click("nav >> text=Data views")
        page.wait_for_selector("h1:has-text('Data views')")
        assert "every data.read is denied until one is registered" in page.inner_text("main")
        page.fill("#id_name", "CRM contacts!")
        page.click("main button:has-text('Register')")
        assert "valid “slug”" in page.inner_text("main")
        page.screenshot(path=str(SHOTS / "data-view-errors.png"), full_page=True)
        page.fill("#id_name", "crm-contacts")
        page.select_option("#id_classification", label="confidential")
        page.select_option("#id_team", "research")
        page.fill("#id_description", "Customer names, e-mail addresses and plans.")
        page.click("main button:has-text('Register')")
        page.wait_for_selector("text=Data view crm-contacts registered as confidential.")
        page.click("a:has-text('crm-contacts')")
        page.select_option("#id_classification", label="restricted")
        page.click("main button:has-text('Save')")
        page.wait_for_selector("text=Data view crm-contacts saved.")
        assert DataView.objects.get(name="crm-contacts").get_classification_display() == "restricted"
        page.screenshot(path=str(SHOTS / "data-views.png"), full_page=True)
        page.close()

        page = browser.new_page(viewport={"width": 1280, "height": 900})
        sign_in(page, live_server.url, "viewer-user", PASSWORD)
        page.wait_for_url(f"{live_server.url}/")
        page.goto(f"{live_server.url}/data-views/")
        row = page.inner_text("table")
        assert "crm-contacts" in row and "restricted" in row
        assert page.locator("text=Register a data view").count() == 0
