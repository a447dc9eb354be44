from __future__ import annotations

from decimal import Decimal

from django import forms

from agents.models import Agent, AgentStatus, Team

from .models import BudgetScope, OnExceed, PriceKind


class DollarField(forms.DecimalField):
    """Dollars with at most 6 decimals, cleaned to integer micro-dollars (exact, no floats)."""

    def __init__(self, *, max_dollars: int = 1_000_000, **kwargs):
        super().__init__(max_digits=13, decimal_places=6, min_value=Decimal(0), max_value=Decimal(max_dollars), **kwargs)

    def clean(self, value):
        amount = super().clean(value)
        return None if amount is None else int(amount * 1_000_000)


def parse_thresholds(text: str) -> list[int]:
    try:
        return [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise forms.ValidationError("Whole percentages separated by commas, e.g. 50, 80, 100.") from None


class BudgetForm(forms.Form):
    scope = forms.ChoiceField(choices=BudgetScope.choices)
    team = forms.ModelChoiceField(queryset=Team.objects.all(), required=False, to_field_name="name")
    agent = forms.ModelChoiceField(queryset=Agent.objects.exclude(status=AgentStatus.RETIRED), required=False, to_field_name="name")
    monthly_limit = DollarField(label="Monthly limit ($)")
    thresholds = forms.CharField(initial="50, 80, 100", required=False, help_text="Alert when spend crosses these percentages (empty: no alerts).")
    on_exceed = forms.ChoiceField(choices=OnExceed.choices, label="Over the limit")

    def clean_thresholds(self):
        return parse_thresholds(self.cleaned_data["thresholds"])


class BudgetEditForm(forms.Form):
    monthly_limit = DollarField(label="Monthly limit ($)")
    thresholds = forms.CharField(required=False)
    on_exceed = forms.ChoiceField(choices=OnExceed.choices, label="Over the limit")
    approvals_required = forms.TypedChoiceField(coerce=int, choices=[(1, "one person"), (2, "two people")],
                                                label="Escalations approved by")
    approval_ttl_hours = forms.IntegerField(min_value=1, max_value=720, required=False,
                                            label="Escalations expire after (hours)",
                                            help_text="Empty: the default (WARDEN_APPROVAL_TTL_HOURS).")
    active = forms.BooleanField(required=False)

    def clean_thresholds(self):
        return parse_thresholds(self.cleaned_data["thresholds"])


class PriceForm(forms.Form):
    kind = forms.ChoiceField(choices=PriceKind.choices)
    name = forms.CharField(max_length=100, help_text="Model name, tool name or endpoint host.")
    input_per_million = DollarField(max_dollars=10_000, required=False, label="$ per million input tokens")
    output_per_million = DollarField(max_dollars=10_000, required=False, label="$ per million output tokens")
    per_call = DollarField(max_dollars=1_000, required=False, label="$ per call")
    effective_from = forms.DateTimeField(required=False, widget=forms.DateTimeInput(attrs={"type": "datetime-local"}),
                                         help_text="Leave empty for now.")
    note = forms.CharField(max_length=200, required=False)
