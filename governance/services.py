"""Writes of the governance domain: demo users, API tokens, roles, grants, policies."""

from __future__ import annotations

import datetime as dt

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from audit.services import audit_record

from . import credentials
from .access import GROUPS
from .exceptions import Conflict
from .models import ApiToken, DataView, Policy, PolicySetVersion, PolicyVersion, Role, RoleGrant
from .policy_engine import check_policy
from .scopes import unknown_scopes
from .selectors import grant_live

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


# --- human API tokens ------------------------------------------------------------


@transaction.atomic
def api_token_issue(*, user, name: str, expires_at: dt.datetime | None = None, by=None) -> tuple[ApiToken, str]:
    """A human API token; the secret is returned here once and never stored."""
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
def api_token_revoke(*, token: ApiToken, by) -> ApiToken:
    token = ApiToken.objects.select_for_update().get(pk=token.pk)
    if token.revoked_at is None:
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])
        audit_record(action="api_token.revoke", actor=by, resource=f"api_token:{token.pk}", payload={"lookup": token.lookup})
    return token


# --- roles and grants -------------------------------------------------------------------


def _clean_scopes(scopes) -> list[str]:
    scopes = sorted(set(scopes or []))
    unknown = unknown_scopes(scopes)
    if unknown:
        raise ValidationError({"scopes": f"Unknown scope(s): {', '.join(unknown)}."})
    return scopes


@transaction.atomic
def role_create(*, name: str, scopes, description: str = "", by) -> Role:
    scopes = _clean_scopes(scopes)
    try:
        with transaction.atomic():
            role = Role.objects.create(name=name, scopes=scopes, description=description)
    except IntegrityError:
        raise ValidationError({"name": f"A role named {name!r} already exists."}) from None
    audit_record(action="role.create", actor=by, resource=f"role:{name}", payload={"scopes": scopes})
    return role


@transaction.atomic
def role_update(*, role: Role, by, scopes=None, description: str | None = None) -> Role:
    role = Role.objects.select_for_update().get(pk=role.pk)
    changes = {}
    if scopes is not None:
        scopes = _clean_scopes(scopes)
        if scopes != role.scopes:
            changes["scopes"] = {"from": role.scopes, "to": scopes}
            role.scopes = scopes
    if description is not None and description != role.description:
        changes["description"] = {"from": role.description, "to": description}
        role.description = description
    if changes:
        role.save()
        audit_record(action="role.update", actor=by, resource=f"role:{role.name}", payload=changes)
    return role


@transaction.atomic
def role_grant(*, agent, role: Role, by, expires_at: dt.datetime | None = None) -> RoleGrant:
    from agents.models import Agent, AgentStatus

    # NO KEY: the gate's and the registry's inserts reference the agent (KEY SHARE) and must not wait on this.
    agent = Agent.objects.select_for_update(of=("self",), no_key=True).select_related("team").get(pk=agent.pk)
    if agent.status == AgentStatus.RETIRED:
        raise Conflict("A retired agent cannot be granted roles.", code="agent_retired")
    if expires_at is not None and expires_at <= timezone.now():
        raise ValidationError({"expires_at": "The expiry must be in the future."})
    live = RoleGrant.objects.filter(agent=agent, role=role, revoked_at__isnull=True).first()
    if live is not None:
        if grant_live(live.expires_at, at=timezone.now()):
            raise ValidationError({"role": f"{agent.name} already holds {role.name}."})
        live.revoked_at = timezone.now()  # an expired grant makes way for the new one
        live.revoked_by = by
        live.save(update_fields=["revoked_at", "revoked_by"])
    grant = RoleGrant.objects.create(agent=agent, role=role, granted_by=by, expires_at=expires_at)
    audit_record(
        action="role.grant", actor=by, agent=agent, resource=f"role:{role.name}",
        payload={"role": role.name, "scopes": role.scopes, "expires_at": expires_at},
    )
    return grant


@transaction.atomic
def role_revoke(*, grant: RoleGrant, by) -> RoleGrant:
    grant = RoleGrant.objects.select_for_update(of=("self",)).select_related("agent__team", "role").get(pk=grant.pk)
    if grant.revoked_at is None:
        grant.revoked_at = timezone.now()
        grant.revoked_by = by
        grant.save(update_fields=["revoked_at", "revoked_by"])
        audit_record(action="role.revoke", actor=by, agent=grant.agent, resource=f"role:{grant.role.name}",
                     payload={"role": grant.role.name})
    return grant


# --- policies -----------------------------------------------------------------------------


RESERVED_POLICY_NAMES = {"validate", "simulate", "sets", "new", "roles"}


def policy_problems(body: str) -> list[str]:
    """Cedar's complaints about a policy text, each pointing at its line where possible."""
    _, problems = check_policy(body)
    return [str(problem) for problem in problems]


def normalise_body(body: str) -> str:
    """Browsers send CRLF from a textarea; store and compare with plain newlines."""
    return (body or "").replace("\r\n", "\n").replace("\r", "\n").rstrip() + "\n"


def _require_valid(body: str) -> None:
    problems = policy_problems(body)
    if problems:
        raise ValidationError({"body": problems})


def _require_reason(reason: str) -> str:
    reason = (reason or "").strip()
    if not reason:
        raise ValidationError({"reason": "Say why: every policy change records its reason."})
    if len(reason) > 500:
        raise ValidationError({"reason": "At most 500 characters."})
    return reason


def _publish(*, by, reason: str) -> PolicySetVersion:
    """Snapshot the enabled policies' current versions as the next policy-set version.

    The advisory lock serialises publishers so version numbers never collide.
    """
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(hashtext('warden.policy_publish'))")
    last = PolicySetVersion.objects.order_by("-number").values_list("number", flat=True).first() or 0
    members = [
        [name, number]
        for name, number in Policy.objects.filter(enabled=True, current__isnull=False)
        .order_by("name")
        .values_list("name", "current__number")
    ]
    # The reason is "<policy> v<n>: <the person's reason>", and the person's may already be the longest allowed.
    limit = PolicySetVersion._meta.get_field("reason").max_length
    reason = reason if len(reason) <= limit else reason[: limit - 1] + "…"
    version = PolicySetVersion.objects.create(number=last + 1, members=members, reason=reason, created_by=by)
    audit_record(
        action="policy_set.publish", actor=by, resource=f"policy_set:{version.number}",
        policy_version=version.number, reasons=[reason], payload={"policies": len(members)},
    )
    return version


def _new_version(*, policy: Policy, body: str, description: str, reason: str, by, restored_from=None) -> PolicyVersion:
    last = policy.versions.order_by("-number").values_list("number", flat=True).first() or 0
    version = PolicyVersion.objects.create(
        policy=policy, number=last + 1, body=body, description=description, reason=reason, created_by=by,
        restored_from=restored_from,
    )
    policy.current = version
    policy.description = description
    policy.save(update_fields=["current", "description"])
    return version


@transaction.atomic
def policy_create(*, name: str, body: str, by, description: str = "", reason: str = "", enabled: bool = True,
                  owner=None) -> Policy:
    reason = _require_reason(reason or "created")
    body = normalise_body(body)
    if name in RESERVED_POLICY_NAMES:
        raise ValidationError({"name": f"{name!r} is reserved; choose another name."})
    _require_valid(body)
    try:
        with transaction.atomic():
            policy = Policy.objects.create(name=name, description=description, owner=owner or by, enabled=enabled,
                                           created_by=by)
    except IntegrityError:
        raise ValidationError({"name": f"A policy named {name!r} already exists."}) from None
    version = _new_version(policy=policy, body=body, description=description, reason=reason, by=by)
    audit_record(action="policy.create", actor=by, resource=f"policy:{name}",
                 payload={"version": version.number, "enabled": enabled, "body": body}, reasons=[reason])
    _publish(by=by, reason=f"{name} v{version.number}: {reason}")
    return policy


@transaction.atomic
def policy_update(*, policy: Policy, body: str, by, reason: str, description: str | None = None) -> PolicyVersion:
    """Every edit is a new immutable version, published at once."""
    reason = _require_reason(reason)
    body = normalise_body(body)
    _require_valid(body)
    policy = Policy.objects.select_for_update(of=("self",)).select_related("current").get(pk=policy.pk)
    description = policy.description if description is None else description
    if policy.current and policy.current.body == body and policy.description == description:
        raise ValidationError({"body": "Nothing changed."})
    version = _new_version(policy=policy, body=body, description=description, reason=reason, by=by)
    audit_record(action="policy.update", actor=by, resource=f"policy:{policy.name}",
                 payload={"version": version.number, "body": body}, reasons=[reason])
    _publish(by=by, reason=f"{policy.name} v{version.number}: {reason}")
    return version


@transaction.atomic
def policy_restore(*, policy: Policy, number: int, by, reason: str = "") -> PolicyVersion:
    """Make an old version current again, as a new version (history is never rewritten)."""
    policy = Policy.objects.select_for_update().get(pk=policy.pk)
    try:
        old = policy.versions.get(number=number)
    except PolicyVersion.DoesNotExist:
        raise ValidationError({"version": f"{policy.name} has no version {number}."}) from None
    reason = _require_reason(reason or f"restored version {number}")
    _require_valid(old.body)  # the schema may have moved on since
    version = _new_version(policy=policy, body=old.body, description=old.description, reason=reason, by=by,
                           restored_from=number)
    audit_record(action="policy.restore", actor=by, resource=f"policy:{policy.name}",
                 payload={"version": version.number, "restored_from": number}, reasons=[reason])
    _publish(by=by, reason=f"{policy.name} v{version.number}: {reason}")
    return version


@transaction.atomic
def policy_set_enabled(*, policy: Policy, enabled: bool, by, reason: str) -> Policy:
    reason = _require_reason(reason)
    policy = Policy.objects.select_for_update().get(pk=policy.pk)
    if policy.enabled == enabled:
        return policy
    policy.enabled = enabled
    policy.save(update_fields=["enabled"])
    audit_record(action="policy.enable" if enabled else "policy.disable", actor=by, resource=f"policy:{policy.name}",
                 reasons=[reason])
    _publish(by=by, reason=f"{policy.name} {'enabled' if enabled else 'disabled'}: {reason}")
    return policy


# --- data views -------------------------------------------------------------------------------------


def _clean_classification(value) -> int:
    from agents.models import Clearance

    labels = {label: number for number, label in Clearance.choices}
    if isinstance(value, str) and value in labels:
        return labels[value]
    if isinstance(value, int) and not isinstance(value, bool) and value in labels.values():
        return value
    raise ValidationError({"classification": f"One of {', '.join(labels)}."})


def _clean_description(description: str) -> str:
    description = (description or "").strip()
    if len(description) > 2000:
        raise ValidationError({"description": "At most 2000 characters."})
    return description


@transaction.atomic
def data_view_create(*, name: str, classification, team, by, description: str = "", source: str = "",
                     columns=None, masks=None, row_rules=None, max_rows: int = 100,
                     base_classification=None) -> DataView:
    """Register a view of data; its classification, not an agent's word, is what data.read is judged on.
    With a source, it serves rows (governance/dataviews.py): its columns, masked and filtered per clearance."""
    from .dataviews import check_view_shape

    columns, masks, row_rules = columns or [], masks or {}, row_rules or []
    if base_classification is not None:
        base_classification = _clean_classification(base_classification)
    check_view_shape(source=source, columns=columns, masks=masks, row_rules=row_rules, max_rows=max_rows,
                     classification=_clean_classification(classification), base_classification=base_classification)
    from django.core.validators import validate_slug

    try:
        validate_slug(name)
    except ValidationError:
        raise ValidationError({"name": "Letters, digits, hyphens and underscores only."}) from None
    if len(name) > 100:
        raise ValidationError({"name": "At most 100 characters."})
    classification = _clean_classification(classification)
    try:
        with transaction.atomic():
            view = DataView.objects.create(name=name, classification=classification, team=team,
                                           description=_clean_description(description), created_by=by, updated_by=by,
                                           source=source, columns=columns, masks=masks, row_rules=row_rules,
                                           max_rows=max_rows, base_classification=base_classification)
    except IntegrityError:
        raise ValidationError({"name": f"A data view named {name!r} already exists."}) from None
    audit_record(action="data_view.create", actor=by, resource=f"data_view:{name}",
                 data_classification=view.get_classification_display(),
                 payload={"classification": view.get_classification_display(), "team": team.name,
                          "description": view.description, "source": source, "columns": columns, "masks": masks,
                          "row_rules": row_rules, "max_rows": max_rows})
    return view


@transaction.atomic
def data_view_update(*, view: DataView, by, classification=None, team=None, description: str | None = None,
                     active: bool | None = None, source: str | None = None, columns=None, masks=None,
                     row_rules=None, max_rows: int | None = None, base_classification="unchanged") -> DataView:
    """Change a view; a new classification, mask or rule applies to the very next data.read."""
    from .dataviews import check_view_shape

    view = DataView.objects.select_for_update(of=("self",)).select_related("team").get(pk=view.pk)
    changes = {}
    shape = {"source": view.source if source is None else source, "columns": view.columns if columns is None else columns,
             "masks": view.masks if masks is None else masks,
             "row_rules": view.row_rules if row_rules is None else row_rules,
             "max_rows": view.max_rows if max_rows is None else max_rows,
             "base_classification": view.base_classification if base_classification == "unchanged" else (
                 None if base_classification in (None, "") else _clean_classification(base_classification))}
    check_view_shape(**shape, classification=view.classification if classification is None
                     else _clean_classification(classification))
    for field, value in shape.items():
        if value != getattr(view, field):
            changes[field] = value
    if classification is not None:
        changes["classification"] = _clean_classification(classification)
    if team is not None:
        changes["team"] = team
    if description is not None:
        changes["description"] = _clean_description(description)
    if active is not None:
        changes["active"] = bool(active)
    labels = {"classification": lambda value: DataView(classification=value).get_classification_display(),
              "team": lambda value: value.name}
    diff = {}
    for field, value in changes.items():
        old = getattr(view, field)
        if old != value:
            show = labels.get(field, lambda value: value)
            diff[field] = {"from": show(old), "to": show(value)}
            setattr(view, field, value)
    if diff:
        view.updated_by = by
        view.save()
        audit_record(action="data_view.update", actor=by, resource=f"data_view:{view.name}",
                     data_classification=view.get_classification_display(), payload=diff)
    return view
