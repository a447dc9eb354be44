"""One filter for the agent list page and `GET /api/v1/agents/`, so they cannot drift."""

from __future__ import annotations

from django import forms
from django.contrib.auth import get_user_model
from django.db.models import Q
from django.utils import timezone

from governance.models import RoleGrant
from governance.selectors import live_grant_filter

from .models import RUN_ACTIVE, AgentStatus, RunSource, RunStatus


class AgentFilter(forms.Form):
    q = forms.CharField(required=False, max_length=100, label="Search")
    status = forms.ChoiceField(required=False, choices=[("", "any status"), *AgentStatus.choices])
    team = forms.SlugField(required=False, max_length=64)
    owner = forms.CharField(required=False, max_length=150)
    role = forms.SlugField(required=False, max_length=64)

    def filter(self, queryset):
        data = self.cleaned_data
        if data.get("q"):
            queryset = queryset.filter(Q(name__icontains=data["q"]) | Q(description__icontains=data["q"]))
        if data.get("status"):
            queryset = queryset.filter(status=data["status"])
        if data.get("team"):
            queryset = queryset.filter(team__name=data["team"])
        if data.get("owner"):
            queryset = queryset.filter(**{f"owner__{get_user_model().USERNAME_FIELD}": data["owner"]})
        if data.get("role"):
            live = RoleGrant.objects.filter(live_grant_filter(timezone.now()), role__name=data["role"])
            queryset = queryset.filter(pk__in=live.values("agent_id"))
        return queryset


class RunFilter(forms.Form):
    """One filter for the runs page, its live updates and `GET /api/v1/runs/`."""

    agent = forms.SlugField(required=False, max_length=64)
    status = forms.ChoiceField(required=False, choices=[("", "any status"), ("active", "active"), *RunStatus.choices])
    source = forms.ChoiceField(required=False, choices=[("", "any source"), *RunSource.choices])
    team = forms.SlugField(required=False, max_length=64)

    def filter(self, queryset):
        data = self.cleaned_data
        if data.get("agent"):
            queryset = queryset.filter(agent__name=data["agent"])
        if data.get("status") == "active":
            queryset = queryset.filter(status__in=RUN_ACTIVE)
        elif data.get("status"):
            queryset = queryset.filter(status=data["status"])
        if data.get("source"):
            queryset = queryset.filter(source=data["source"])
        if data.get("team"):
            queryset = queryset.filter(agent__team__name=data["team"])
        return queryset
