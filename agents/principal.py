"""What `request.user` is when an agent key authenticated the request."""

from __future__ import annotations


class AgentPrincipal:
    """An authenticated agent. It holds no human capability: `can()` is False."""

    is_authenticated = True
    is_anonymous = False
    is_active = True
    is_superuser = False
    is_staff = False
    _warden_groups = frozenset()

    def __init__(self, agent, key):
        self.agent = agent
        self.key = key
        self.pk = None

    def get_username(self) -> str:
        return f"agent:{self.agent.name}"

    def __str__(self) -> str:
        return self.get_username()
