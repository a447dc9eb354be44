from __future__ import annotations

import uuid

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.db import models
from django.db.models import Q
from django.utils import timezone


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
    # The program Warden's workers run for it (a dotted path from WARDEN_AGENT_PROGRAMS); blank: it runs elsewhere.
    program = models.CharField(max_length=200, blank=True)
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


# --- runs: agents whose program Warden's workers execute (agents/runtime/) ---------------------------


class RunStatus(models.TextChoices):
    QUEUED = "queued", "queued"
    RUNNING = "running", "running"
    WAITING_APPROVAL = "waiting_approval", "waiting for approval"
    SUCCEEDED = "succeeded", "succeeded"
    FAILED = "failed", "failed"
    CANCELLED = "cancelled", "cancelled"


RUN_ACTIVE = (RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.WAITING_APPROVAL)
RUN_FINAL = (RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED)


class RunSource(models.TextChoices):
    BROWSER = "browser", "browser"
    API = "api", "API"
    SCHEDULE = "schedule", "schedule"
    DELEGATION = "delegation", "delegation"  # a parent run's ctx.delegate


class AgentRun(models.Model):
    """One execution of an agent's program towards an objective; its steps are the ledger it resumes from."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    agent = models.ForeignKey(Agent, on_delete=models.PROTECT, related_name="runs")
    program = models.CharField(max_length=200)
    objective = models.TextField()
    status = models.CharField(max_length=20, choices=RunStatus.choices, default=RunStatus.QUEUED)
    source = models.CharField(max_length=16, choices=RunSource.choices)
    started_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True,
                                   related_name="+")
    schedule = models.ForeignKey("RunSchedule", on_delete=models.SET_NULL, null=True, blank=True, related_name="runs")
    # A child run: started by a parent run's ctx.delegate, acting under the delegation (narrowed scopes).
    parent = models.ForeignKey("self", on_delete=models.PROTECT, null=True, blank=True, related_name="children")
    parent_step = models.PositiveIntegerField(null=True, blank=True)
    delegation = models.ForeignKey(Delegation, on_delete=models.PROTECT, null=True, blank=True, related_name="runs")
    # The run's label: the highest classification of the data it has seen so far (it only rises), and where
    # that came from ([{"view", "classification", "step", "run"}]). Everything the run does next carries it.
    label = models.PositiveSmallIntegerField(choices=Clearance.choices, default=Clearance.PUBLIC)
    label_sources = models.JSONField(default=list, blank=True)
    correlation_id = models.CharField(max_length=128)
    cost_micros = models.BigIntegerField(default=0)  # settled so far, at Warden's prices
    steps_done = models.PositiveIntegerField(default=0)
    plan = models.JSONField(null=True, blank=True)
    result = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True)
    deliveries = models.PositiveIntegerField(default=0)  # how many times a worker took it up
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(default=timezone.now)  # last progress: the recovery sweep's clock
    finished_at = models.DateTimeField(null=True, blank=True)
    cancelled_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True,
                                     related_name="+")

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["agent", "-created_at"]),
            models.Index(fields=["status", "-created_at"]),
            models.Index(fields=["heartbeat_at"], condition=Q(status__in=["queued", "running", "waiting_approval"]),
                         name="run_active_idx"),
        ]

    def __str__(self) -> str:
        return f"run {self.pk} of {self.agent_id}"

    @property
    def active(self) -> bool:
        return self.status in RUN_ACTIVE


class StepKind(models.TextChoices):
    LLM = "llm", "model call"
    TOOL = "tool", "tool call"
    PLAN = "plan", "plan"
    READ = "read", "data read"
    DELEGATE = "delegate", "delegation"


class StepStatus(models.TextChoices):
    RUNNING = "running", "running"
    WAITING_APPROVAL = "waiting_approval", "waiting for approval"
    SUCCEEDED = "succeeded", "succeeded"
    FAILED = "failed", "failed"  # it ran and did not work (provider error, invalid output, tool error)
    DENIED = "denied", "denied"  # the gate said no (or the approval did)
    REFUSED = "refused", "refused"  # never sent: the runtime could not build it (bad arguments, no upstream)
    CANCELLED = "cancelled", "cancelled"


STEP_FINAL = (StepStatus.SUCCEEDED, StepStatus.FAILED, StepStatus.DENIED, StepStatus.REFUSED)


class RunStep(models.Model):
    """One call a program made through its context: the gate's action, what ran, what it cost, what came back.

    `result` is replayed into the program when the run is taken up again: a step that finished never runs twice.
    """

    run = models.ForeignKey(AgentRun, on_delete=models.PROTECT, related_name="steps")
    index = models.PositiveIntegerField()
    kind = models.CharField(max_length=16, choices=StepKind.choices)
    name = models.CharField(max_length=255)  # the model, tool, view or agent
    fingerprint = models.CharField(max_length=64)  # of the request: a replay that asks otherwise has diverged
    status = models.CharField(max_length=20, choices=StepStatus.choices, default=StepStatus.RUNNING)
    input_summary = models.TextField(blank=True)
    output_summary = models.TextField(blank=True)
    result = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True)
    error_kind = models.CharField(max_length=32, blank=True)
    reasons = models.JSONField(default=list)
    provider = models.CharField(max_length=32, blank=True)  # "simulated" for the offline provider
    input_tokens = models.PositiveIntegerField(default=0)
    output_tokens = models.PositiveIntegerField(default=0)
    cost_micros = models.BigIntegerField(default=0)
    retries = models.PositiveIntegerField(default=0)  # transport retries and rejected outputs
    attempts = models.JSONField(default=list)  # one entry per gated call: action, outcome, tokens, cost, rejection
    gate_requests = models.PositiveIntegerField(default=0)  # asked anew after an action lapsed (idempotency key)
    action = models.ForeignKey("governance.Action", on_delete=models.PROTECT, null=True, blank=True, related_name="+")
    # The label of what the step sent (the run's label when it ran) and of what it returned (its result).
    label_in = models.PositiveSmallIntegerField(choices=Clearance.choices, default=Clearance.PUBLIC)
    label = models.PositiveSmallIntegerField(choices=Clearance.choices, default=Clearance.PUBLIC)
    child = models.ForeignKey(AgentRun, on_delete=models.PROTECT, null=True, blank=True, related_name="+")
    started_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)
    duration_ms = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["run", "index"]
        constraints = [models.UniqueConstraint(fields=["run", "index"], name="one_step_per_index")]


class RunSchedule(models.Model):
    """Beat starts a run of `agent` towards `objective` every `interval_seconds` (never two at once)."""

    agent = models.ForeignKey(Agent, on_delete=models.PROTECT, related_name="schedules")
    objective = models.TextField()
    interval_seconds = models.PositiveIntegerField()
    enabled = models.BooleanField(default=True)
    demo = models.BooleanField(default=False)  # demo traffic: off with WARDEN_DEMO_TRAFFIC=0
    next_run_at = models.DateTimeField()
    created_at = models.DateTimeField(default=timezone.now)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True,
                                   related_name="+")

    class Meta:
        ordering = ["agent", "id"]
        indexes = [models.Index(fields=["next_run_at"], condition=Q(enabled=True), name="schedule_due_idx")]
        constraints = [models.CheckConstraint(condition=Q(interval_seconds__gte=60), name="schedule_at_most_every_minute")]


class GatewayCall(models.Model):
    """One forward of a gateway call (agents/gateway) to its upstream: an allowed Action is forwarded once."""

    action = models.OneToOneField("governance.Action", primary_key=True, on_delete=models.PROTECT, related_name="+")
    agent = models.ForeignKey(Agent, on_delete=models.PROTECT, related_name="gateway_calls")
    model = models.CharField(max_length=255)
    stream = models.BooleanField(default=False)
    upstream_status = models.PositiveSmallIntegerField(null=True, blank=True)
    started_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["agent", "-started_at"])]


MCP_SERVER_NAME = r"^[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?$"  # short: "server/tool" names a price (100 chars)
MCP_TOOL_NAME = r"^[A-Za-z0-9_.-]{1,64}$"  # the MCP specification's tool names


class McpServer(models.Model):
    """An MCP server an admin registered. Agents reach it only through Warden's MCP gateway (`/mcp/<name>/`),
    and only the tools registered here, each a `tool.call` on `<name>/<tool>` judged by the gate."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=32, unique=True)
    url = models.URLField(max_length=500)
    description = models.TextField(blank=True)
    active = models.BooleanField(default=True)
    timeout_seconds = models.PositiveSmallIntegerField(default=30)
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, related_name="+")
    updated_at = models.DateTimeField(auto_now=True)
    updated_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, related_name="+")

    class Meta:
        ordering = ["name"]
        constraints = [models.CheckConstraint(condition=models.Q(name__regex=MCP_SERVER_NAME), name="mcp_server_name"),
                       models.CheckConstraint(condition=models.Q(timeout_seconds__gte=1, timeout_seconds__lte=600),
                                              name="mcp_server_timeout")]

    def __str__(self) -> str:
        return self.name


class McpTool(models.Model):
    """One tool of a registered MCP server, as Warden forwards it. Its price (billing.Price, kind tool) and how
    sensitive data it may receive (governance.DataSink, kind tool) live under the name `<server>/<tool>`;
    `returns` is how sensitive what it answers is (an agent that called it carries that, as after a data read)."""

    server = models.ForeignKey(McpServer, on_delete=models.PROTECT, related_name="tools")
    name = models.CharField(max_length=64)
    description = models.TextField(blank=True)
    input_schema = models.JSONField(default=dict)
    returns = models.PositiveSmallIntegerField(choices=Clearance.choices, default=Clearance.PUBLIC)
    active = models.BooleanField(default=True)
    updated_at = models.DateTimeField(auto_now=True)
    updated_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, related_name="+")

    class Meta:
        ordering = ["server__name", "name"]
        constraints = [models.UniqueConstraint(fields=["server", "name"], name="mcp_tool_unique"),
                       models.CheckConstraint(condition=models.Q(name__regex=MCP_TOOL_NAME), name="mcp_tool_name")]

    def __str__(self) -> str:
        return self.resource

    @property
    def resource(self) -> str:
        """What the gate, prices, data sinks and an agent's allowed tools call it."""
        return f"{self.server.name}/{self.name}"
