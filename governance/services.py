"""Writes of the governance domain (human side)."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import transaction

from .access import GROUPS

DEMO_USERS = {
    "admin": "admin",
    "finance": "finance",
    "security": "security",
    "viewer": "viewer",
}


@transaction.atomic
def demo_users_ensure(*, password: str) -> list[str]:
    """Create (or reset) one demo user per group, each in exactly its group.

    Safe to run twice: existing users keep their history and get the given
    password, so the printed logins always work.
    """
    User = get_user_model()
    created = []
    for username, group_name in DEMO_USERS.items():
        group, _ = Group.objects.get_or_create(name=group_name)
        user, was_created = User.objects.get_or_create(
            username=username, defaults={"email": f"{username}@warden.local"}
        )
        user.set_password(password)
        user.is_active = True
        user.save(update_fields=["password", "is_active"])
        user.groups.set([group])
        if was_created:
            created.append(username)
    assert set(DEMO_USERS.values()) == set(GROUPS)
    return created
