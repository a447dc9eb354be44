"""One rule for which role grants are live, wherever roles are read."""

from __future__ import annotations

import datetime as dt

from django.utils import timezone

from governance.models import RoleGrant
from tests.conftest import ask


def test_an_expired_grant_is_no_role_anywhere(bot, policy, api_for, client_for):
    policy("all", "permit(principal, action, resource);")
    RoleGrant.objects.filter(agent=bot.agent).update(expires_at=timezone.now() - dt.timedelta(seconds=1))
    denied = ask(bot).json()
    assert denied["outcome"] == "denied" and "role grant(s) expired: researcher" in denied["reasons"][0]
    admin = api_for("admin")
    assert admin.get(f"/api/v1/agents/{bot.agent.pk}/").json()["roles"] == []
    assert admin.get("/api/v1/agents/?role=researcher").json()["results"] == []
    assert "bot" not in client_for("admin").get("/agents/?role=researcher").content.decode()
    RoleGrant.objects.filter(agent=bot.agent).update(expires_at=timezone.now() + dt.timedelta(hours=1))
    assert [agent["name"] for agent in admin.get("/api/v1/agents/?role=researcher").json()["results"]] == ["bot"]
    assert ask(bot).json()["outcome"] == "allowed"
