"""A delegation is judged at every use, against what its delegators hold now."""

from __future__ import annotations

import datetime as dt

import pytest
from django.contrib.auth.models import Group
from django.utils import timezone

from agents import services
from governance.models import RoleGrant
from governance.services import role_revoke
from tests.conftest import ask


@pytest.fixture
def boss_chain(make_agent, agent_client, policy, prices):
    """boss (roles delegator: agent.delegate; researcher: llm.call, data.read ...) -> bot (llm.call, data.read)."""
    from governance.models import Role

    Role.objects.create(name="delegator", scopes=["agent.delegate"])
    policy("all", "permit(principal, action, resource);")
    boss = make_agent("boss", role_names=["delegator", "researcher"])
    bot = make_agent("bot", role_names=[], allowed_models=["gpt-4o-mini"])
    delegation = services.delegation_create(delegate=bot, by_agent=boss, scopes=["llm.call", "data.read"],
                                            expires_at=timezone.now() + dt.timedelta(hours=1))
    return boss, agent_client(bot), delegation


def test_a_role_revoked_upstream_narrows_the_delegation_at_once(boss_chain, personas):
    boss, bot, delegation = boss_chain
    assert ask(bot, on_behalf_of=str(delegation.pk)).json()["outcome"] == "allowed"
    role_revoke(grant=RoleGrant.objects.get(agent=boss, role__name="researcher"), by=personas["admin"])
    body = ask(bot, on_behalf_of=str(delegation.pk)).json()
    assert body["outcome"] == "denied"
    assert body["reasons"] == ["scope llm.call was delegated, but boss, who delegated it, no longer holds it"]


def test_a_delegator_that_may_no_longer_delegate_lends_nothing(boss_chain, personas):
    boss, bot, delegation = boss_chain
    role_revoke(grant=RoleGrant.objects.get(agent=boss, role__name="delegator"), by=personas["admin"])
    body = ask(bot, on_behalf_of=str(delegation.pk)).json()
    assert body["outcome"] == "denied" and "boss no longer holds agent.delegate" in body["reasons"][0]


def test_an_expired_role_upstream_narrows_it_too(boss_chain):
    boss, bot, delegation = boss_chain
    RoleGrant.objects.filter(agent=boss).update(expires_at=timezone.now() - dt.timedelta(seconds=1))
    assert ask(bot, on_behalf_of=str(delegation.pk)).json()["outcome"] == "denied"


def test_a_suspended_delegator_invalidates_what_it_lent(boss_chain, personas):
    boss, bot, delegation = boss_chain
    services.agent_suspend(agent=boss, by=personas["security"], reason="odd")
    body = ask(bot, on_behalf_of=str(delegation.pk)).json()
    assert body["outcome"] == "denied" and "delegating agent boss is suspended" in body["reasons"][0]


@pytest.mark.parametrize("change,reason", [
    ("deactivate", "delegating user admin-user is no longer active"),
    ("demote", "delegating user admin-user may no longer manage agents"),
])
def test_a_person_who_lent_scopes_must_still_be_able_to(bot, policy, personas, change, reason):
    policy("all", "permit(principal, action, resource);")
    delegation = services.delegation_create(delegate=bot.agent, by_user=personas["admin"], scopes=["llm.call"],
                                            expires_at=timezone.now() + dt.timedelta(hours=1))
    assert ask(bot, on_behalf_of=str(delegation.pk)).json()["outcome"] == "allowed"
    admin = personas["admin"]
    if change == "deactivate":
        admin.is_active = False
        admin.save()
    else:
        admin.groups.remove(Group.objects.get(name="admin"))
    body = ask(bot, on_behalf_of=str(delegation.pk)).json()
    assert body["outcome"] == "denied" and reason in body["reasons"][0]


def test_re_delegation_checks_what_the_parent_lends_now(boss_chain, make_agent, personas):
    from agents.models import Agent
    from django.core.exceptions import ValidationError

    boss, bot, delegation = boss_chain
    helper = make_agent("helper", role_names=[])
    role_revoke(grant=RoleGrant.objects.get(agent=boss, role__name="researcher"), by=personas["admin"])
    with pytest.raises(ValidationError, match="cannot widen"):
        services.delegation_create(delegate=helper, by_agent=Agent.objects.get(name="bot"), parent=delegation,
                                   scopes=["llm.call"], expires_at=timezone.now() + dt.timedelta(minutes=30))
