from __future__ import annotations

import datetime as dt

from django import forms

from billing.forms import DollarField
from django.contrib.auth import get_user_model
from django.utils import timezone

from governance.models import Role
from governance.scopes import SCOPES

from .models import Clearance, Team


class ListField(forms.CharField):
    """Comma- or line-separated names."""

    def to_python(self, value):
        value = super().to_python(value) or ""
        return [item.strip() for item in value.replace("\n", ",").split(",") if item.strip()]


class AgentForm(forms.Form):
    name = forms.SlugField(max_length=64, help_text="Lowercase letters, digits and hyphens; unique; cannot change later.")
    description = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), required=False, max_length=2000,
                                  help_text="What the agent is for.")
    owner = forms.ModelChoiceField(queryset=get_user_model().objects.filter(is_active=True).order_by("username"),
                                   help_text="The person who answers for this agent.")
    team = forms.ModelChoiceField(queryset=Team.objects.all())
    roles = forms.ModelMultipleChoiceField(queryset=Role.objects.all(), required=False,
                                           widget=forms.CheckboxSelectMultiple, to_field_name="name")
    allowed_models = ListField(required=False, help_text="Comma-separated model names.")
    allowed_tools = ListField(required=False, help_text="Comma-separated tool names.")
    clearance = forms.TypedChoiceField(choices=Clearance.choices, coerce=int, initial=Clearance.INTERNAL)
    program = forms.ChoiceField(required=False, help_text="What Warden's workers run for it; none if it runs "
                                                           "elsewhere and asks the gate over the API.")
    activate = forms.BooleanField(required=False, initial=True, label="Activate now")

    def __init__(self, *args, **kwargs):
        from .runtime.programs import allowed_programs, program_label

        super().__init__(*args, **kwargs)
        self.fields["program"].choices = [("", "none: it runs elsewhere"),
                                          *((path, f"{path} — {program_label(path)}") for path in allowed_programs())]


class AgentEditForm(AgentForm):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for name in ("name", "roles", "activate"):
            del self.fields[name]


class ReasonForm(forms.Form):
    reason = forms.CharField(max_length=500, required=False, widget=forms.Textarea(attrs={"rows": 2}))


class KeyForm(forms.Form):
    name = forms.CharField(max_length=100, required=False)
    expires_in_days = forms.IntegerField(required=False, min_value=1, max_value=3650,
                                         help_text="Leave empty for a key that does not expire.")

    def expires_at(self) -> dt.datetime | None:
        days = self.cleaned_data.get("expires_in_days")
        return timezone.now() + dt.timedelta(days=days) if days else None


class DelegationForm(forms.Form):
    scopes = forms.MultipleChoiceField(choices=[(name, f"{name} — {text}") for name, text in SCOPES.items()],
                                       widget=forms.CheckboxSelectMultiple)
    expires_in_hours = forms.IntegerField(min_value=1, max_value=90 * 24, initial=8)
    max_depth = forms.IntegerField(min_value=1, max_value=10, initial=2,
                                   help_text="How many hops the chain may have, this one included.")
    purpose = forms.CharField(max_length=200, required=False)


class TeamForm(forms.Form):
    name = forms.SlugField(max_length=64)
    display_name = forms.CharField(max_length=120, required=False)


class BudgetIncreaseForm(forms.Form):
    budget = forms.IntegerField(widget=forms.HiddenInput)
    monthly_limit = DollarField(label="New monthly limit ($)")
    reason = forms.CharField(max_length=1000, widget=forms.Textarea(attrs={"rows": 2}),
                             help_text="Why: finance reads it before deciding.")


class RunStartForm(forms.Form):
    objective = forms.CharField(max_length=4000, widget=forms.Textarea(attrs={"rows": 3}),
                                help_text="What the run should achieve; the program receives it as its objective.")


class ScheduleForm(forms.Form):
    objective = forms.CharField(max_length=4000, widget=forms.Textarea(attrs={"rows": 2}))
    every_minutes = forms.IntegerField(min_value=1, max_value=31 * 24 * 60, initial=60, label="Every (minutes)")
