"""`Authorization: Bearer <token>` for agent keys and human API tokens.

A missing, garbled, unknown, revoked or expired credential all get the same
401 answer: nothing reveals whether a key, token or agent exists.
"""

from __future__ import annotations

import datetime as dt
import functools

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


@functools.lru_cache(maxsize=1)
def _key_sql() -> tuple[str, list]:
    from django.contrib.auth import get_user_model

    from agents.models import Agent, Team

    models = [AgentKey, Agent, Team, get_user_model()]
    columns = [[field.column for field in model._meta.concrete_fields] for model in models]
    aliases = ["k", "a", "t", "u"]
    select = ", ".join(f'{alias}."{column}"' for alias, names in zip(aliases, columns) for column in names)
    users = models[3]._meta.db_table
    sql = (f"SELECT {select} FROM agents_agentkey k JOIN agents_agent a ON a.id = k.agent_id "
           f'JOIN agents_team t ON t.id = a.team_id JOIN "{users}" u ON u.id = a.owner_id WHERE k.lookup = %s')
    return sql, [(model, [field.attname for field in model._meta.concrete_fields]) for model in models]


def agent_key_by_lookup(lookup: str) -> AgentKey | None:
    """The key with its agent, the agent's team and owner, as `select_related` would give them, from one
    prepared statement: building and planning the ORM's four-table join cost more than the rest of a bare
    authenticated request."""
    from governance.hotpath import prepared_cursor

    sql, shapes = _key_sql()
    with prepared_cursor() as cursor:
        cursor.execute(sql, [lookup])
        row = cursor.fetchone()
    if row is None:
        return None
    made, start = [], 0
    for model, names in shapes:
        made.append(model.from_db("default", names, row[start:start + len(names)]))
        start += len(names)
    key, agent, team, owner = made
    agent.team, agent.owner = team, owner
    key.agent = agent
    return key


def resolve_bearer(secret: str):
    """(principal, credential) for a valid secret, else None."""
    parsed = credentials.parse(secret)
    if parsed is None:
        return None
    prefix, lookup = parsed
    now = timezone.now()
    if prefix == credentials.AGENT_PREFIX:
        key = agent_key_by_lookup(lookup)
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
