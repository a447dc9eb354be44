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


@transaction.atomic
def api_token_issue(*, user, name: str, expires_at=None, by=None):
    """A human API token; the secret is returned here once and never stored."""
    from django.core.exceptions import ValidationError
    from django.utils import timezone

    from audit.services import audit_record

    from . import credentials
    from .models import ApiToken

    if not user.is_active:
        raise ValidationError({"user": "The user is not active."})
    name = (name or "").strip()
    if not name or len(name) > 100:
        raise ValidationError({"name": "Give the token a name of at most 100 characters."})
    if expires_at is not None and expires_at <= timezone.now():
        raise ValidationError({"expires_at": "The expiry must be in the future."})
    new = credentials.new_secret(credentials.USER_PREFIX)
    token = ApiToken.objects.create(user=user, name=name, lookup=new.lookup, digest=new.digest, expires_at=expires_at)
    audit_record(
        action="api_token.issue",
        actor=by or user,
        resource=f"api_token:{token.pk}",
        payload={"user": user.get_username(), "name": name, "lookup": token.lookup, "expires_at": expires_at},
    )
    return token, new.secret


@transaction.atomic
def api_token_revoke(*, token, by):
    from django.utils import timezone

    from audit.services import audit_record

    from .models import ApiToken

    token = ApiToken.objects.select_for_update().get(pk=token.pk)
    if token.revoked_at is None:
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])
        audit_record(action="api_token.revoke", actor=by, resource=f"api_token:{token.pk}", payload={"lookup": token.lookup})
    return token
