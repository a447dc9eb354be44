import datetime as dt

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from agents import services
from agents.models import Delegation
from agents.selectors import delegation_state
from governance.exceptions import Conflict


def hours(n):
    return timezone.now() + dt.timedelta(hours=n)


@pytest.fixture
def chain(make_agent, personas):
    """admin -> lead (llm.call, tool.http, agent.delegate) -> worker (llm.call, agent.delegate)."""
    lead, worker, helper = make_agent("lead"), make_agent("worker"), make_agent("helper")
    root = services.delegation_create(
        delegate=lead, by_user=personas["admin"], scopes=["llm.call", "tool.http", "agent.delegate"], expires_at=hours(4)
    )
    hop = services.delegation_create(
        delegate=worker, by_agent=lead, parent=root, scopes=["llm.call", "agent.delegate"], expires_at=hours(2)
    )
    return {"root": root, "hop": hop, "lead": lead, "worker": worker, "helper": helper}


def test_the_chain_is_recorded_from_the_human_down(chain):
    state = delegation_state(chain["hop"])
    assert [(h["type"], h["name"]) for h in state.chain] == [("user", "admin-user"), ("agent", "lead"), ("agent", "worker")]
    assert chain["hop"].depth == 2
    assert state.problem is None and state.scopes == {"llm.call", "agent.delegate"}


def test_a_delegation_can_never_widen_scopes(chain):
    with pytest.raises(ValidationError, match="cannot widen"):
        services.delegation_create(
            delegate=chain["helper"], by_agent=chain["worker"], parent=chain["hop"],
            scopes=["llm.call", "tool.http"], expires_at=hours(1),
        )
    assert not Delegation.objects.filter(delegate=chain["helper"]).exists()


def test_a_delegation_cannot_outlive_its_parent(chain):
    with pytest.raises(ValidationError, match="outlive"):
        services.delegation_create(
            delegate=chain["helper"], by_agent=chain["worker"], parent=chain["hop"], scopes=["llm.call"], expires_at=hours(3)
        )


def test_only_the_receiver_can_pass_a_delegation_on(chain):
    with pytest.raises(ValidationError, match="Only the agent that received"):
        services.delegation_create(
            delegate=chain["helper"], by_agent=chain["lead"], parent=chain["hop"], scopes=["llm.call"], expires_at=hours(1)
        )


def test_depth_is_limited(chain, make_agent):
    third = services.delegation_create(
        delegate=chain["helper"], by_agent=chain["worker"], parent=chain["hop"],
        scopes=["llm.call", "agent.delegate"], expires_at=hours(1),
    )
    assert third.depth == 3
    fourth_agent = make_agent("fourth")
    with pytest.raises(ValidationError, match="at most 3"):
        services.delegation_create(
            delegate=fourth_agent, by_agent=chain["helper"], parent=third, scopes=["llm.call"], expires_at=hours(0.5)
        )


def test_cycles_are_refused(chain):
    with pytest.raises(ValidationError, match="no cycles"):
        services.delegation_create(
            delegate=chain["lead"], by_agent=chain["worker"], parent=chain["hop"], scopes=["llm.call"], expires_at=hours(1)
        )


def test_revoking_any_hop_invalidates_what_hangs_below(chain, personas):
    services.delegation_revoke(delegation=chain["root"], by=personas["admin"], reason="project over")
    problem = delegation_state(chain["hop"]).problem
    assert problem and "revoked" in problem
    with pytest.raises(Conflict):
        services.delegation_create(
            delegate=chain["helper"], by_agent=chain["worker"], parent=chain["hop"], scopes=["llm.call"], expires_at=hours(1)
        )


def test_suspending_a_delegating_agent_invalidates_its_delegations(chain, personas):
    services.agent_suspend(agent=chain["lead"], by=personas["security"], reason="odd")
    assert "lead is suspended" in delegation_state(chain["hop"]).problem


def test_an_expired_hop_invalidates_the_chain(chain):
    Delegation.objects.filter(pk=chain["root"].pk).update(expires_at=timezone.now() - dt.timedelta(seconds=1))
    assert "expired" in delegation_state(chain["hop"]).problem


def test_an_agent_delegates_only_scopes_its_roles_grant(make_agent, roles):
    boss = make_agent("boss", role_names=["orchestrator"])
    plain = make_agent("plain", role_names=["llm-user"])
    target = make_agent("target")
    d = services.delegation_create(delegate=target, by_agent=boss, scopes=["llm.call", "data.read"], expires_at=hours(1))
    assert d.depth == 1 and d.delegator_agent == boss
    with pytest.raises(ValidationError, match="does not hold"):
        services.delegation_create(delegate=target, by_agent=boss, scopes=["external.call"], expires_at=hours(1))
    with pytest.raises(ValidationError, match="agent.delegate"):
        services.delegation_create(delegate=target, by_agent=plain, scopes=["llm.call"], expires_at=hours(1))


def test_expired_role_grants_give_no_scopes_to_delegate(make_agent):
    from governance.models import RoleGrant

    boss = make_agent("boss2", role_names=["orchestrator"])
    RoleGrant.objects.filter(agent=boss).update(expires_at=timezone.now() - dt.timedelta(minutes=1))
    with pytest.raises(ValidationError, match="agent.delegate"):
        services.delegation_create(delegate=make_agent("t2"), by_agent=boss, scopes=["llm.call"], expires_at=hours(1))


@pytest.mark.parametrize(
    "body,field",
    [
        ({"scopes": ["root.everything"], "expires_in_hours": 1}, "scopes"),
        ({"scopes": [], "expires_in_hours": 1}, "scopes"),
        ({"scopes": ["llm.call"]}, "non_field_errors"),
        ({"scopes": ["llm.call"], "expires_in_hours": 5000}, "expires_in_hours"),
        ({"scopes": ["llm.call"], "expires_at": "2000-01-01T00:00:00Z"}, "non_field_errors"),
    ],
)
def test_bad_delegations_over_the_api_are_refused(api_for, make_agent, body, field):
    agent = make_agent()
    response = api_for("admin").post(f"/api/v1/agents/{agent.pk}/delegations/", body, format="json")
    assert response.status_code == 400
    assert field in response.json()["errors"], response.json()
    assert not Delegation.objects.exists()


def test_an_admin_delegates_and_revokes_over_the_api(api_for, make_agent):
    agent = make_agent()
    client = api_for("admin")
    response = client.post(
        f"/api/v1/agents/{agent.pk}/delegations/", {"scopes": ["llm.call"], "expires_in_hours": 2, "purpose": "demo"}, format="json"
    )
    assert response.status_code == 201
    delegation_id = response.json()["id"]
    assert response.json()["delegator"] == {"type": "user", "name": "admin-user"}
    assert client.post(f"/api/v1/delegations/{delegation_id}/revoke/", {"reason": "done"}, format="json").status_code == 200
    assert Delegation.objects.get(pk=delegation_id).revoked_at is not None
    assert api_for("viewer").post(f"/api/v1/delegations/{delegation_id}/revoke/", {}, format="json").status_code == 403
