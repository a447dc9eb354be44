"""One filter for the approval queue page, its live updates and `GET /api/v1/approvals/`."""

from __future__ import annotations

import datetime as dt

from django import forms
from django.db.models import Q
from django.utils import timezone

from .models import ApprovalStatus

AGES = [("", "any age"), ("1", "waiting 1 h or more"), ("4", "waiting 4 h or more"), ("24", "waiting a day or more")]


class ApprovalFilter(forms.Form):
    status = forms.ChoiceField(required=False, choices=[("", "any status"), *ApprovalStatus.choices,
                                                        ("decided", "decided (any outcome)")])
    group = forms.ChoiceField(required=False, choices=[("", "any group"), ("admin", "admin"), ("finance", "finance"),
                                                      ("security", "security")])
    agent = forms.SlugField(required=False, max_length=64)
    team = forms.SlugField(required=False, max_length=64)
    age = forms.ChoiceField(required=False, choices=AGES)

    def filter(self, approvals, *, now: dt.datetime | None = None):
        data = self.cleaned_data
        if data.get("status") == "decided":
            approvals = approvals.exclude(status=ApprovalStatus.PENDING)
        elif data.get("status"):
            approvals = approvals.filter(status=data["status"])
        if data.get("group"):
            approvals = approvals.filter(groups__contains=[data["group"]])
        if data.get("agent"):
            name = data["agent"]
            approvals = approvals.filter(Q(action__agent__name=name) | Q(requested_by_agent__name=name)
                                         | Q(budget__agent__name=name))
        if data.get("team"):
            team = data["team"]
            approvals = approvals.filter(Q(action__agent__team__name=team) | Q(budget__team__name=team)
                                         | Q(requested_by_agent__team__name=team))
        if data.get("age"):
            approvals = approvals.filter(created_at__lte=(now or timezone.now()) - dt.timedelta(hours=int(data["age"])))
        # Oldest first while they wait; the history newest decision first.
        return approvals.order_by("created_at" if data.get("status") == "pending" else "-created_at")
