"""Reads go through the one permission funnel: the audit log for security, approvals for their group."""

from __future__ import annotations

import pytest

from governance.models import Approval
from governance.selectors import approval_may_decide
from tests.conftest import ask


@pytest.mark.parametrize("persona,sees", [("security", True), ("admin", False), ("finance", False), ("viewer", False)])
def test_an_agents_audit_events_show_on_its_page_only_to_security(client_for, bot, personas, persona, sees):
    from agents.services import agent_suspend

    agent_suspend(agent=bot.agent, by=personas["security"], reason="a very particular reason")
    page = client_for(persona).get(f"/agents/{bot.agent.pk}/").content.decode()
    assert ("<code>agent.suspend</code>" in page) == sees  # the audit event, not the agent's own status line
    assert ("Recent activity" in page) == sees


def test_approvals_are_seen_and_decided_by_the_group_they_are_routed_to(bot, policy, personas):
    policy("all", "permit(principal, action, resource);")
    policy("sec", '@escalate("security")\nforbid(principal, action, resource == Model::"gpt-4o");')
    ask(bot, resource="gpt-4o")
    approval = Approval.objects.get()
    assert approval.group == "security"
    deciders = {name for name in ("admin", "finance", "security", "viewer", "outsider")
                if approval_may_decide(user=personas[name], approval=approval)}
    assert deciders == {"security"}
