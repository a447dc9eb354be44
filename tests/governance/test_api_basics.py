import pytest


def test_api_errors_are_problem_json(client, db):
    response = client.get("/api/v1/me/")
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert response["Content-Type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == 401
    assert body["title"]
    assert body["correlation_id"] == response["X-Request-ID"]


def test_unknown_api_paths_are_problem_json_404(client, db):
    response = client.get("/api/v1/nope/")
    assert response.status_code == 404
    assert response["Content-Type"] == "application/problem+json"
    assert response.json()["status"] == 404


@pytest.mark.parametrize(
    "persona,capabilities",
    [
        ("admin", {"agent.manage", "policy.manage", "approval.decide"}),
        ("finance", {"budget.manage", "approval.decide"}),
        ("security", {"audit.view", "agent.suspend"}),
        ("viewer", {"agent.view", "policy.view", "budget.view"}),
    ],
)
def test_me_reports_the_callers_groups_and_capabilities(client_for, persona, capabilities):
    body = client_for(persona).get("/api/v1/me/").json()
    assert body["groups"] == [persona]
    assert capabilities <= set(body["capabilities"])
    if persona != "security":
        assert "audit.view" not in body["capabilities"]


def test_the_openapi_schema_and_docs_are_served(client_for):
    client = client_for("viewer")
    schema = client.get("/api/schema/")
    assert schema.status_code == 200
    assert b"openapi: 3" in schema.content
    docs = client.get("/api/docs/")
    assert docs.status_code == 200
    assert b"swagger" in docs.content.lower()
    assert b"cdn" not in docs.content.lower()
