"""`Authorization: Bearer <token>` for agent keys and human API tokens.

A missing, garbled, unknown, revoked or expired credential all get the same
401 answer: nothing reveals whether a key, token or agent exists.
"""

from __future__ import annotations

import datetime as dt

from django.utils import timezone
from rest_framework import authentication, exceptions

from agents.models import AgentKey
from agents.principal import AgentPrincipal
from governance import credentials
from governance.models import ApiToken

from .throttles import Anonymous, BadCredentials

# last_used_at is written at most this often per credential, not on every call.
LAST_USED_RESOLUTION = dt.timedelta(seconds=30)
INVALID = "Invalid, expired or revoked credential."


def _touch(credential, now) -> None:
    if credential.last_used_at is None or credential.last_used_at <= now - LAST_USED_RESOLUTION:
        type(credential).objects.filter(pk=credential.pk).update(last_used_at=now)


def resolve_bearer(secret: str):
    """(principal, credential) for a valid secret, else None."""
    parsed = credentials.parse(secret)
    if parsed is None:
        return None
    prefix, lookup = parsed
    now = timezone.now()
    if prefix == credentials.AGENT_PREFIX:
        key = AgentKey.objects.select_related("agent__team", "agent__owner").filter(lookup=lookup).first()
        if key is None or not credentials.matches(secret, key.digest):
            return None
        if key.revoked_at is not None or (key.expires_at is not None and key.expires_at <= now):
            return None
        _touch(key, now)
        return AgentPrincipal(key.agent, key), key
    token = ApiToken.objects.select_related("user").filter(lookup=lookup).first()
    if token is None or not credentials.matches(secret, token.digest):
        return None
    if token.revoked_at is not None or (token.expires_at is not None and token.expires_at <= now):
        return None
    if not token.user.is_active:
        return None
    _touch(token, now)
    return token.user, token


class BearerAuthentication(authentication.BaseAuthentication):
    """Bearer credentials; past the rate of bad ones from an address, a bad one is answered 429."""

    keyword = "Bearer"

    def authenticate(self, request):
        header = authentication.get_authorization_header(request).decode("latin-1")
        if not header:
            return None
        scheme, _, secret = header.partition(" ")
        if scheme.lower() != "bearer":
            return None
        result = resolve_bearer(secret.strip())
        if result is None:
            failures = BadCredentials()
            if not failures.count(request):
                raise failures.refuse()
            raise exceptions.AuthenticationFailed(INVALID)
        return result

    def authenticate_header(self, request):
        return 'Bearer realm="warden"'


class AnonymousLimit(authentication.BaseAuthentication):
    """Last in line: a request no credential authenticated is counted, and refused (429) past the rate."""

    def authenticate(self, request):
        anonymous = Anonymous()
        if not anonymous.count(request):
            raise anonymous.refuse()
        return None
