from __future__ import annotations

import uuid

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.db import models
from django.db.models import Q


class Team(models.Model):
    name = models.SlugField(max_length=64, unique=True)
    display_name = models.CharField(max_length=120)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.display_name or self.name


class Clearance(models.IntegerChoices):
    PUBLIC = 0, "public"
    INTERNAL = 1, "internal"
    CONFIDENTIAL = 2, "confidential"
    RESTRICTED = 3, "restricted"


class AgentStatus(models.TextChoices):
    PENDING = "pending", "pending"
    ACTIVE = "active", "active"
    SUSPENDED = "suspended", "suspended"
    RETIRED = "retired", "retired"


class Agent(models.Model):
    """A system actor with its own identity. Never hard-deleted: retire it."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.SlugField(max_length=64, unique=True)
    description = models.TextField(blank=True)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="owned_agents")
    team = models.ForeignKey(Team, on_delete=models.PROTECT, related_name="agents")
    status = models.CharField(max_length=16, choices=AgentStatus.choices, default=AgentStatus.PENDING)
    status_reason = models.TextField(blank=True)
    status_changed_at = models.DateTimeField(null=True, blank=True)
    status_changed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    roles = models.ManyToManyField(
        "governance.Role", through="governance.RoleGrant", related_name="agents", blank=True
    )
    allowed_models = ArrayField(models.CharField(max_length=100), default=list, blank=True)
    allowed_tools = ArrayField(models.CharField(max_length=100), default=list, blank=True)
    clearance = models.PositiveSmallIntegerField(choices=Clearance.choices, default=Clearance.INTERNAL)
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, related_name="+")
    updated_at = models.DateTimeField(auto_now=True)
    updated_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, related_name="+")
    last_seen_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["name"]
        indexes = [models.Index(fields=["status"]), models.Index(fields=["team", "status"])]

    def __str__(self) -> str:
        return self.name


class AgentKey(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    agent = models.ForeignKey(Agent, on_delete=models.PROTECT, related_name="keys")
    name = models.CharField(max_length=100, blank=True)
    lookup = models.CharField(max_length=8, unique=True)
    digest = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, related_name="+")
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    revoked_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, related_name="+")
    revoked_reason = models.CharField(max_length=200, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    @property
    def display_prefix(self) -> str:
        return f"wdn_agent_{self.lookup}_…"


class Delegation(models.Model):
    """One hop of authority: a human or an agent lends some scopes to an agent.

    Hops form a chain through `parent`; a hop is valid only while it and every
    hop above it are unrevoked and unexpired, and it never holds a scope its
    parent (or, at the root, its delegator) does not hold.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    parent = models.ForeignKey("self", on_delete=models.PROTECT, null=True, blank=True, related_name="children")
    delegator_user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="delegations_given"
    )
    delegator_agent = models.ForeignKey(
        Agent, on_delete=models.PROTECT, null=True, blank=True, related_name="delegations_given"
    )
    delegate = models.ForeignKey(Agent, on_delete=models.PROTECT, related_name="delegations_received")
    scopes = ArrayField(models.CharField(max_length=64))
    depth = models.PositiveSmallIntegerField()
    max_depth = models.PositiveSmallIntegerField(help_text="deepest hop allowed below the root of this chain")
    purpose = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, related_name="+")
    expires_at = models.DateTimeField()
    revoked_at = models.DateTimeField(null=True, blank=True)
    revoked_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, related_name="+")
    revoked_reason = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(
                condition=(Q(delegator_user__isnull=False) & Q(delegator_agent__isnull=True))
                | (Q(delegator_user__isnull=True) & Q(delegator_agent__isnull=False)),
                name="delegation_has_one_delegator",
            )
        ]
