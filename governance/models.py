from __future__ import annotations

import uuid

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.db import models
from django.db.models import Q
from django.utils import timezone

from agents.models import Clearance


class Role(models.Model):
    """A named bundle of scopes, granted to agents."""

    name = models.SlugField(max_length=64, unique=True)
    description = models.TextField(blank=True)
    scopes = ArrayField(models.CharField(max_length=64), default=list, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class RoleGrant(models.Model):
    """A role held by an agent, possibly until an expiry, granted by someone."""

    agent = models.ForeignKey("agents.Agent", on_delete=models.PROTECT, related_name="role_grants")
    role = models.ForeignKey(Role, on_delete=models.PROTECT, related_name="grants")
    granted_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, related_name="+")
    granted_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    revoked_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, related_name="+")

    class Meta:
        ordering = ["role__name"]
        constraints = [
            models.UniqueConstraint(
                fields=["agent", "role"], condition=Q(revoked_at__isnull=True), name="one_live_grant_per_role"
            )
        ]


class ApiToken(models.Model):
    """A human's bearer token for the REST API (automation, scripts)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="api_tokens")
    name = models.CharField(max_length=100)
    lookup = models.CharField(max_length=8, unique=True)
    digest = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    @property
    def display_prefix(self) -> str:
        return f"wdn_user_{self.lookup}_…"


class Policy(models.Model):
    """A named Cedar policy. Its text lives in immutable versions."""

    name = models.SlugField(max_length=100, unique=True)
    description = models.TextField(blank=True)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="owned_policies")
    enabled = models.BooleanField(default=True)
    current = models.ForeignKey("PolicyVersion", on_delete=models.PROTECT, null=True, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, related_name="+")

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class PolicyVersion(models.Model):
    """One immutable edit of a policy: who, when, why."""

    policy = models.ForeignKey(Policy, on_delete=models.PROTECT, related_name="versions")
    number = models.PositiveIntegerField()
    body = models.TextField()
    description = models.TextField(blank=True)
    reason = models.CharField(max_length=500)
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, related_name="+")
    restored_from = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["-number"]
        constraints = [models.UniqueConstraint(fields=["policy", "number"], name="policy_version_unique")]


class PolicySetVersion(models.Model):
    """The active policy set after each publish; every decision records its number."""

    number = models.PositiveIntegerField(primary_key=True)
    members = models.JSONField(default=list)  # [[policy name, version number], ...] of enabled policies
    reason = models.CharField(max_length=500)
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, related_name="+")

    class Meta:
        ordering = ["-number"]


class ActionOutcome(models.TextChoices):
    ALLOWED = "allowed", "allowed"
    DENIED = "denied", "denied"
    PENDING_APPROVAL = "pending_approval", "pending approval"


class ActionStatus(models.TextChoices):
    DECIDED = "decided", "decided"  # allowed and not yet completed, or denied, or pending
    SUCCEEDED = "succeeded", "succeeded"
    FAILED = "failed", "failed"
    EXPIRED = "expired", "expired"  # allowed, never completed in time: the sweep released its reservation
    CANCELLED = "cancelled", "cancelled"  # allowed, then its agent was suspended or retired before it completed


class DataView(models.Model):
    """A named view of data an agent may read, with the classification Warden (not the agent) gives it."""

    name = models.SlugField(max_length=100, unique=True)
    classification = models.PositiveSmallIntegerField(choices=Clearance.choices)
    team = models.ForeignKey("agents.Team", on_delete=models.PROTECT, related_name="data_views")
    description = models.TextField(blank=True)
    active = models.BooleanField(default=True)
    # What it serves (governance/dataviews.py). A view without a source is classified, not served.
    #   source   "file:<path under WARDEN_DATA_DIR>.jsonl|.csv" or "table:<database alias>:<table>"
    #   columns  the columns it exposes, in order; nothing else is ever read
    #   masks    {column: clearance needed to see it unmasked}: below it, the value is masked
    #   row_rules [{"below": clearance, "column": c, "in": [values]}]: an agent below that clearance sees
    #            only the rows whose column holds one of the values
    source = models.CharField(max_length=300, blank=True)
    columns = models.JSONField(default=list, blank=True)
    masks = models.JSONField(default=dict, blank=True)
    # The classification of the columns no mask names (empty: the view's). A read is labelled with the highest
    # classification among the columns it serves unmasked: a mask's clearance for a masked column shown in
    # clear, this for every other column.
    base_classification = models.PositiveSmallIntegerField(choices=Clearance.choices, null=True, blank=True)
    row_rules = models.JSONField(default=list, blank=True)
    max_rows = models.PositiveIntegerField(default=100)
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, related_name="+")
    updated_at = models.DateTimeField(auto_now=True)
    updated_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, related_name="+")

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class SinkKind(models.TextChoices):
    MODEL = "model", "model"
    TOOL = "tool", "tool"
    ENDPOINT = "endpoint", "endpoint"


class DataSink(models.Model):
    """How sensitive data a model, tool or external endpoint may receive (an agent's is its clearance).

    `name` "*" is the default of its kind; without one, models and tools are cleared for internal data and
    endpoints for public data only (governance/flow.py)."""

    kind = models.CharField(max_length=16, choices=SinkKind.choices)
    name = models.CharField(max_length=255)
    clearance = models.PositiveSmallIntegerField(choices=Clearance.choices)
    note = models.CharField(max_length=200, blank=True)
    updated_at = models.DateTimeField(auto_now=True)
    updated_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, related_name="+")

    class Meta:
        ordering = ["kind", "name"]
        constraints = [models.UniqueConstraint(fields=["kind", "name"], name="data_sink_unique")]

    def __str__(self) -> str:
        return f"{self.kind} {self.name}: {self.get_clearance_display()}"


class Action(models.Model):
    """One request of an agent to act, the gate's judgement, and its completion."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    agent = models.ForeignKey("agents.Agent", on_delete=models.PROTECT, related_name="actions")
    key = models.ForeignKey("agents.AgentKey", on_delete=models.PROTECT, null=True, blank=True, related_name="+")
    delegation = models.ForeignKey("agents.Delegation", on_delete=models.PROTECT, null=True, blank=True, related_name="+")
    action = models.CharField(max_length=32)
    resource = models.CharField(max_length=255)
    context = models.JSONField(default=dict)  # as the caller gave it
    cedar_context = models.JSONField(default=dict)  # as the policies saw it
    cedar_entities = models.JSONField(default=list)  # principal and resource, for simulation
    idempotency_key = models.CharField(max_length=128, null=True, blank=True)
    request_digest = models.CharField(max_length=64)
    outcome = models.CharField(max_length=20, choices=ActionOutcome.choices)
    reasons = models.JSONField(default=list)
    policy_ids = models.JSONField(default=list)
    observed = models.JSONField(null=True, blank=True)
    policy_version = models.PositiveIntegerField(null=True, blank=True)
    delegation_chain = models.JSONField(default=list)
    estimated_cost_micros = models.BigIntegerField(default=0)
    reserved_micros = models.BigIntegerField(default=0)
    # When it became allowed (at the gate, or when its approval was decided): the sweep's clock starts here.
    allowed_at = models.DateTimeField(null=True, blank=True)
    status = models.CharField(max_length=16, choices=ActionStatus.choices, default=ActionStatus.DECIDED)
    usage = models.JSONField(null=True, blank=True)
    actual_cost_micros = models.BigIntegerField(null=True, blank=True)
    correlation_id = models.CharField(max_length=128, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    @property
    def gateway_arguments(self) -> str:
        """The arguments of an MCP gateway call, as Warden recorded them for the person deciding (only for the
        gateway's own Actions: an agent's REST context saying so is not shown as such)."""
        from .flow import GATEWAY_KEY_PREFIX

        if not (self.idempotency_key or "").startswith(f"{GATEWAY_KEY_PREFIX}mcp:"):
            return ""
        shown = ((self.context or {}).get("gateway") or {}).get("arguments")
        return shown if isinstance(shown, str) else ""

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["agent", "idempotency_key"],
                condition=Q(idempotency_key__isnull=False),
                name="action_idempotency_unique",
            )
        ]
        indexes = [
            models.Index(fields=["agent", "-created_at"]),
            models.Index(fields=["-created_at"]),
            # What the sweep and the kill switch look for: allowed and not completed, a small set.
            models.Index(fields=["allowed_at"], condition=Q(outcome="allowed", status="decided"),
                         name="action_open_allowed_idx"),
            # What an agent read lately (governance/flow.py asks on every outbound call over the API).
            models.Index(fields=["agent", "-created_at"], condition=Q(action="data.read", outcome="allowed"),
                         name="action_reads_by_agent_idx"),
            # The latest call of each tool answering sensitive data (flow.py, hotpath.py: every outbound call).
            models.Index(fields=["agent", "resource", "-created_at"], condition=Q(action="tool.call", outcome="allowed"),
                         name="action_tool_calls_idx"),
        ]


class ApprovalStatus(models.TextChoices):
    PENDING = "pending", "pending"
    APPROVED = "approved", "approved"
    DENIED = "denied", "denied"
    EXPIRED = "expired", "expired"


class ApprovalKind(models.TextChoices):
    ACTION = "action", "escalated action"
    BUDGET_INCREASE = "budget_increase", "budget increase"


class Approval(models.Model):
    """A request for a person's decision: an escalated action, or more budget.

    An escalated action's approval belongs to that one Action and its request
    digest: what is approved is what runs (a changed request is a new Action).
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    kind = models.CharField(max_length=16, choices=ApprovalKind.choices, default=ApprovalKind.ACTION)
    action = models.OneToOneField(Action, on_delete=models.PROTECT, null=True, blank=True, related_name="approval")
    request_digest = models.CharField(max_length=64, blank=True)
    budget = models.ForeignKey("billing.Budget", on_delete=models.PROTECT, null=True, blank=True,
                               related_name="increase_requests")
    requested_limit_micros = models.BigIntegerField(null=True, blank=True)
    # Who asked for a budget increase: a person, or an agent over the API.
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True,
                                     related_name="+")
    requested_by_agent = models.ForeignKey("agents.Agent", on_delete=models.PROTECT, null=True, blank=True,
                                           related_name="+")
    purpose = models.CharField(max_length=1000, blank=True)  # what the asker says it is for: a claim
    group = models.CharField(max_length=32)  # the first of `groups`, for lists and messages
    # Every group that must approve (each escalating policy's); one approver of each, distinct people.
    groups = ArrayField(models.CharField(max_length=32), default=list)
    required_approvals = models.PositiveSmallIntegerField(default=1)
    # Budgets (escalating when exceeded) whose limit this request asks to go past: the only ones an approval waives.
    budget_ids = ArrayField(models.BigIntegerField(), default=list, blank=True)
    status = models.CharField(max_length=16, choices=ApprovalStatus.choices, default=ApprovalStatus.PENDING)
    reasons = models.JSONField(default=list)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(null=True)
    reminded_at = models.DateTimeField(null=True, blank=True)
    decided_at = models.DateTimeField(null=True, blank=True)
    decided_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, related_name="+")
    note = models.CharField(max_length=2000, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["status", "group"]),
            models.Index(fields=["expires_at"], condition=Q(status="pending"), name="approval_pending_expiry_idx"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=(Q(kind="action") & Q(action__isnull=False))
                | (Q(kind="budget_increase") & Q(budget__isnull=False) & Q(requested_limit_micros__isnull=False)),
                name="approval_names_what_it_decides",
            ),
            models.CheckConstraint(condition=Q(required_approvals__gte=1) & Q(required_approvals__lte=4),
                                   name="approval_approver_count"),
            # One open increase request per asker and budget, even when two arrive at once.
            models.UniqueConstraint(fields=["budget", "requested_by", "requested_by_agent"],
                                    condition=Q(kind="budget_increase", status="pending"), nulls_distinct=False,
                                    name="one_pending_increase_per_asker"),
        ]


class ApprovalVerdict(models.TextChoices):
    APPROVE = "approve", "approved"
    DENY = "deny", "denied"


class ApprovalDecision(models.Model):
    """One person's verdict on an approval (two distinct ones when two are required)."""

    approval = models.ForeignKey(Approval, on_delete=models.PROTECT, related_name="decisions")
    decided_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    group = models.CharField(max_length=32)  # the group this person decided for
    verdict = models.CharField(max_length=8, choices=ApprovalVerdict.choices)
    comment = models.CharField(max_length=2000, blank=True)
    decided_at = models.DateTimeField()

    class Meta:
        ordering = ["decided_at", "id"]
        constraints = [models.UniqueConstraint(fields=["approval", "decided_by"], name="one_verdict_per_person")]


class AlertKind(models.TextChoices):
    SPEND_RATE = "spend_rate", "spend rate"
    DENIAL_RATE = "denial_rate", "denial rate"
    NEW_RESOURCE = "new_resource", "first use"
    BURST = "burst", "call burst"
    FAILING_RUNS = "failing_runs", "runs failing"


class Alert(models.Model):
    """An agent behaving unlike itself (governance/anomalies.py): one per agent, rule and window (`key`)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    kind = models.CharField(max_length=16, choices=AlertKind.choices)
    agent = models.ForeignKey("agents.Agent", on_delete=models.PROTECT, related_name="alerts")
    key = models.CharField(max_length=200, unique=True)
    title = models.CharField(max_length=200)
    normal = models.CharField(max_length=500)  # what this agent usually does
    observed = models.CharField(max_length=500)  # what it did
    evidence = models.CharField(max_length=500)  # a console path to what shows it
    details = models.JSONField(default=dict)
    suspended = models.BooleanField(default=False)  # the rule suspended the agent
    created_at = models.DateTimeField()
    emailed_at = models.DateTimeField(null=True, blank=True)
    webhook_status = models.CharField(max_length=100, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["agent", "-created_at"]), models.Index(fields=["-created_at"])]

    def __str__(self) -> str:
        return self.title
