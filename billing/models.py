"""Money: prices, monthly budgets, reservations and the spend ledger.

Every amount is an integer number of micro-dollars (1 USD = 1,000,000).
"""

from __future__ import annotations

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.db import models
from django.db.models import Q


class PriceKind(models.TextChoices):
    MODEL = "model", "model"
    TOOL = "tool", "tool"
    ENDPOINT = "endpoint", "external endpoint"


class Price(models.Model):
    """The price of one model, tool or endpoint from `effective_from` on (rows are never edited)."""

    kind = models.CharField(max_length=16, choices=PriceKind.choices)
    name = models.CharField(max_length=100)
    input_per_million_micros = models.BigIntegerField(default=0)
    output_per_million_micros = models.BigIntegerField(default=0)
    per_call_micros = models.BigIntegerField(default=0)
    effective_from = models.DateTimeField()
    note = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, related_name="+")

    class Meta:
        ordering = ["kind", "name", "-effective_from"]
        indexes = [models.Index(fields=["kind", "name", "-effective_from"])]
        constraints = [
            models.UniqueConstraint(fields=["kind", "name", "effective_from"], name="price_once_per_instant"),
            models.CheckConstraint(
                condition=Q(input_per_million_micros__gte=0) & Q(output_per_million_micros__gte=0) & Q(per_call_micros__gte=0),
                name="price_not_negative",
            ),
        ]


class BudgetScope(models.TextChoices):
    ORGANISATION = "organisation", "organisation"
    TEAM = "team", "team"
    AGENT = "agent", "agent"


class OnExceed(models.TextChoices):
    DENY = "deny", "deny"
    ESCALATE = "escalate", "escalate to finance"


class Budget(models.Model):
    """A monthly limit for the organisation, a team or an agent."""

    scope = models.CharField(max_length=16, choices=BudgetScope.choices)
    team = models.ForeignKey("agents.Team", on_delete=models.PROTECT, null=True, blank=True, related_name="budgets")
    agent = models.ForeignKey("agents.Agent", on_delete=models.PROTECT, null=True, blank=True, related_name="budgets")
    monthly_limit_micros = models.BigIntegerField()
    thresholds = ArrayField(models.PositiveSmallIntegerField(), default=list)
    on_exceed = models.CharField(max_length=16, choices=OnExceed.choices, default=OnExceed.DENY)
    # When over the limit escalates: how many distinct finance people approve, and how long the request waits.
    approvals_required = models.PositiveSmallIntegerField(default=1)
    approval_ttl_hours = models.PositiveSmallIntegerField(null=True, blank=True)  # None: WARDEN_APPROVAL_TTL_HOURS
    active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, related_name="+")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["scope", "id"]
        constraints = [
            models.UniqueConstraint(fields=["scope"], condition=Q(scope="organisation"), name="one_org_budget"),
            models.UniqueConstraint(fields=["team"], condition=Q(scope="team"), name="one_budget_per_team"),
            models.UniqueConstraint(fields=["agent"], condition=Q(scope="agent"), name="one_budget_per_agent"),
            models.CheckConstraint(condition=Q(monthly_limit_micros__gte=0), name="budget_limit_not_negative"),
        ]

    @property
    def label(self) -> str:
        if self.scope == BudgetScope.TEAM:
            return f"team {self.team.name}"
        if self.scope == BudgetScope.AGENT:
            return f"agent {self.agent.name}"
        return "organisation"


class BudgetPeriod(models.Model):
    """One calendar month of one budget. Created on first use: no job opens a month."""

    budget = models.ForeignKey(Budget, on_delete=models.PROTECT, related_name="periods")
    period_start = models.DateField()
    spent_micros = models.BigIntegerField(default=0)
    reserved_micros = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["budget", "period_start"], name="one_period_per_month"),
            models.CheckConstraint(condition=Q(reserved_micros__gte=0), name="reserved_not_negative"),
        ]


class ReservationLine(models.Model):
    """What one action holds at one budget period until it is settled or released."""

    action = models.ForeignKey("governance.Action", on_delete=models.PROTECT, related_name="reservation_lines")
    period = models.ForeignKey(BudgetPeriod, on_delete=models.PROTECT, related_name="lines")
    micros = models.BigIntegerField()
    settled_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["action", "period"], name="one_line_per_period")]


class LedgerEntry(models.Model):
    """One settlement: what an action actually cost. Names are kept as text."""

    action = models.OneToOneField("governance.Action", on_delete=models.PROTECT, related_name="ledger_entry")
    agent = models.ForeignKey("agents.Agent", on_delete=models.PROTECT, related_name="ledger_entries")
    agent_name = models.CharField(max_length=64)
    team = models.CharField(max_length=64)
    kind = models.CharField(max_length=32)  # the action, e.g. llm.call
    resource = models.CharField(max_length=255)  # the model, tool or endpoint
    input_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    cost_micros = models.BigIntegerField()
    reserved_micros = models.BigIntegerField()
    overage_micros = models.BigIntegerField(default=0)
    status = models.CharField(max_length=16)  # succeeded | failed
    # Who reported the usage the cost was priced from: the agent itself (a claim, over the REST API),
    # the provider's answer (runtime, gateway), or Warden (work it did itself).
    usage_source = models.CharField(max_length=16, default="agent")
    # The completion came after the reservation was released (swept or cancelled): spent, never reserved.
    unreserved = models.BooleanField(default=False)
    period_start = models.DateField()
    occurred_at = models.DateTimeField()

    class Meta:
        ordering = ["-occurred_at"]
        indexes = [
            models.Index(fields=["period_start", "agent"]),
            models.Index(fields=["-occurred_at"]),
            models.Index(fields=["agent", "-occurred_at"]),
        ]


class NotificationKind(models.TextChoices):
    THRESHOLD = "threshold", "budget threshold"
    SPIKE = "spike", "spend spike"


class Notification(models.Model):
    """An alert for finance: in-app, by email and, if configured, a signed webhook."""

    kind = models.CharField(max_length=16, choices=NotificationKind.choices)
    budget = models.ForeignKey(Budget, on_delete=models.PROTECT, null=True, blank=True, related_name="notifications")
    agent = models.ForeignKey("agents.Agent", on_delete=models.PROTECT, null=True, blank=True, related_name="+")
    period_start = models.DateField()
    threshold = models.PositiveSmallIntegerField(null=True, blank=True)
    key = models.CharField(max_length=120, unique=True)  # once per threshold (or spike) per period
    message = models.CharField(max_length=500)
    created_at = models.DateTimeField(auto_now_add=True)
    emailed_at = models.DateTimeField(null=True, blank=True)
    webhook_status = models.CharField(max_length=100, blank=True)

    class Meta:
        ordering = ["-created_at"]
