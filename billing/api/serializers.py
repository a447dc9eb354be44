from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from agents.models import Agent, Team

from ..models import BudgetScope, OnExceed, PriceKind


@extend_schema_field(OpenApiTypes.INT64)
class StrictMicros(serializers.Field):
    """An integer of micro-dollars; floats and strings are refused (no currency mistakes)."""

    default_error_messages = {"invalid": "A whole number of micro-dollars (1 USD = 1000000); floats are refused."}

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("invalid")
        return data

    def to_representation(self, value):
        return value


class BudgetInput(serializers.Serializer):
    scope = serializers.ChoiceField(choices=BudgetScope.values)
    team = serializers.SlugRelatedField(slug_field="name", queryset=Team.objects.all(), required=False, allow_null=True, default=None)
    agent = serializers.SlugRelatedField(slug_field="name", queryset=Agent.objects.all(), required=False, allow_null=True, default=None)
    monthly_limit_micros = StrictMicros()
    thresholds = serializers.ListField(child=serializers.IntegerField(), required=False, max_length=10)
    on_exceed = serializers.ChoiceField(choices=OnExceed.values, default=OnExceed.DENY)


class BudgetUpdateInput(serializers.Serializer):
    monthly_limit_micros = StrictMicros(required=False)
    thresholds = serializers.ListField(child=serializers.IntegerField(), required=False, max_length=10)
    on_exceed = serializers.ChoiceField(choices=OnExceed.values, required=False)
    active = serializers.BooleanField(required=False)
    approvals_required = serializers.ChoiceField(choices=[1, 2], required=False,
                                                 help_text="distinct finance approvers when over the limit escalates")
    approval_ttl_hours = serializers.IntegerField(min_value=1, max_value=720, required=False,
                                                  help_text="how long such a request waits before it expires")


class BudgetOutput(serializers.Serializer):
    id = serializers.IntegerField(source="budget.id")
    scope = serializers.CharField(source="budget.scope")
    target = serializers.CharField(source="budget.label")
    monthly_limit_micros = serializers.IntegerField(source="limit")
    thresholds = serializers.ListField(child=serializers.IntegerField(), source="budget.thresholds")
    on_exceed = serializers.CharField(source="budget.on_exceed")
    approvals_required = serializers.IntegerField(source="budget.approvals_required")
    approval_ttl_hours = serializers.IntegerField(source="budget.approval_ttl_hours", allow_null=True)
    active = serializers.BooleanField(source="budget.active")
    spent_micros = serializers.IntegerField(source="spent")
    reserved_micros = serializers.IntegerField(source="reserved")
    remaining_micros = serializers.IntegerField(source="remaining")


class PriceInput(serializers.Serializer):
    kind = serializers.ChoiceField(choices=PriceKind.values)
    name = serializers.CharField(max_length=100)
    input_per_million_micros = StrictMicros(required=False, default=0)
    output_per_million_micros = StrictMicros(required=False, default=0)
    per_call_micros = StrictMicros(required=False, default=0)
    effective_from = serializers.DateTimeField(required=False, allow_null=True, default=None)
    note = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")


class PriceOutput(serializers.Serializer):
    id = serializers.IntegerField()
    kind = serializers.CharField()
    name = serializers.CharField()
    input_per_million_micros = serializers.IntegerField()
    output_per_million_micros = serializers.IntegerField()
    per_call_micros = serializers.IntegerField()
    effective_from = serializers.DateTimeField()
    note = serializers.CharField()


class SpendGroup(serializers.Serializer):
    key = serializers.CharField()
    cost_micros = serializers.IntegerField()
    actions = serializers.IntegerField()
    input_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()
    overage_micros = serializers.IntegerField()


class SpendOutput(serializers.Serializer):
    month = serializers.CharField()
    group_by = serializers.CharField()
    total_micros = serializers.IntegerField()
    forecast_micros = serializers.IntegerField()
    groups = SpendGroup(many=True)


class NotificationOutput(serializers.Serializer):
    id = serializers.IntegerField()
    kind = serializers.CharField()
    message = serializers.CharField()
    threshold = serializers.IntegerField(allow_null=True)
    period_start = serializers.DateField()
    created_at = serializers.DateTimeField()
    emailed_at = serializers.DateTimeField(allow_null=True)
    webhook_status = serializers.CharField()
