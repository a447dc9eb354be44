"""Every page of the console, for every persona: who sees it, who is refused."""

import pytest

PAGES = {
    "/agents/": {"admin", "finance", "security", "viewer"},
    "/policies/": {"admin", "security", "viewer"},
    "/data-views/": {"admin", "finance", "security", "viewer"},
    "/approvals/": {"admin", "finance", "security"},
    "/budgets/": {"admin", "finance", "viewer"},
    "/audit/": {"security"},
}
PERSONAS = ("admin", "finance", "security", "viewer", "outsider")


@pytest.mark.parametrize("path", PAGES)
@pytest.mark.parametrize("persona", PERSONAS)
def test_each_page_is_shown_only_to_the_groups_that_may_see_it(client_for, persona, path):
    response = client_for(persona).get(path)
    if persona in PAGES[path]:
        assert response.status_code == 200
    else:
        assert response.status_code == 403
        assert b"Your groups do not allow this" in response.content


@pytest.mark.parametrize("path", [*PAGES, "/"])
def test_anonymous_visitors_are_sent_to_sign_in(client, db, path):
    response = client.get(path)
    assert response.status_code == 302
    assert response["Location"].startswith("/login/?next=")


@pytest.mark.parametrize("persona", PERSONAS)
def test_navigation_lists_exactly_the_sections_the_persona_may_open(client_for, persona):
    html = client_for(persona).get("/").content.decode()
    for path, groups in PAGES.items():
        assert (f'href="{path}"' in html) == (persona in groups), path


def test_a_user_without_group_is_told_so_on_the_overview(client_for):
    html = client_for("outsider").get("/").content.decode()
    assert "not in any group" in html


def test_the_sign_in_page_renders(client, db):
    response = client.get("/login/")
    assert response.status_code == 200
    assert b"Sign in to Warden" in response.content


def test_signing_in_with_the_right_password_opens_the_overview(client, personas):
    from tests.conftest import PASSWORD

    response = client.post("/login/", {"username": "finance-user", "password": PASSWORD}, follow=True)
    assert response.status_code == 200
    assert response.wsgi_request.user.username == "finance-user"
    assert b'href="/budgets/"' in response.content


def test_signing_in_with_a_wrong_password_shows_an_error_and_signs_nobody_in(client, personas):
    response = client.post("/login/", {"username": "finance-user", "password": "nope"})
    assert response.status_code == 200
    assert b"didn't match" in response.content
    assert not response.wsgi_request.user.is_authenticated


def test_signing_out_ends_the_session(client_for):
    client = client_for("viewer")
    assert client.post("/logout/").status_code == 302
    assert client.get("/agents/").status_code == 302


def test_unknown_pages_get_a_friendly_404(client_for):
    response = client_for("viewer").get("/no-such-page/")
    assert response.status_code == 404
    assert b"There is nothing here" in response.content


def test_a_nul_character_anywhere_in_a_request_is_400_not_a_server_error(client_for, policy):
    from governance.models import Policy

    policy("p", "permit(principal, action, resource);")
    admin = client_for("admin")
    assert admin.get("/policies/simulate/?policy=%00").status_code == 400
    assert admin.get("/policies/simulate/?policy=p").status_code == 200
    refused = admin.post("/policies/p/toggle/", {"enabled": "0", "reason": "off\x00"})
    assert refused.status_code == 400 and b"NUL character" in refused.content
    assert Policy.objects.get(name="p").enabled
