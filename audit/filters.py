"""One filter for the audit timeline page, its fragments, the API and exports."""

from __future__ import annotations

import base64
import datetime as dt

from django import forms
from django.db.models import Q

from .models import AuditEvent


class AuditFilter(forms.Form):
    agent = forms.CharField(required=False, max_length=64)
    team = forms.CharField(required=False, max_length=64)
    actor = forms.CharField(required=False, max_length=150)
    action = forms.CharField(required=False, max_length=64, help_text="exact, or a prefix ending in '.' (gate.)")
    outcome = forms.CharField(required=False, max_length=32)
    since = forms.DateTimeField(required=False)
    until = forms.DateTimeField(required=False)
    correlation_id = forms.CharField(required=False, max_length=128)
    q = forms.CharField(required=False, max_length=200, label="Text in reasons")
    cursor = forms.CharField(required=False, max_length=200)
    after = forms.CharField(required=False, max_length=200, help_text="only events newer than this cursor (catch-up)")
    limit = forms.IntegerField(required=False, min_value=1, max_value=200)

    def clean_cursor(self):
        return self._decode(self.cleaned_data["cursor"])

    def clean_after(self):
        return self._decode(self.cleaned_data["after"])

    @staticmethod
    def _decode(value):
        if not value:
            return None
        try:
            when, event_id = base64.urlsafe_b64decode(value.encode()).decode().split("|")
            return dt.datetime.fromisoformat(when), int(event_id)
        except (ValueError, UnicodeDecodeError):
            raise forms.ValidationError("Not a cursor this API gave out.") from None

    def clean(self):
        data = super().clean()
        if data.get("since") and data.get("until") and data["since"] > data["until"]:
            raise forms.ValidationError("'since' is after 'until'.")
        return data

    @property
    def page_size(self) -> int:
        return self.cleaned_data.get("limit") or 50

    def filter(self, queryset):
        data = self.cleaned_data
        if data.get("agent"):
            queryset = queryset.filter(agent_name=data["agent"])
        if data.get("team"):
            queryset = queryset.filter(team=data["team"])
        if data.get("actor"):
            queryset = queryset.filter(actor_name=data["actor"])
        if data.get("action"):
            action = data["action"]
            queryset = queryset.filter(action__startswith=action) if action.endswith(".") else queryset.filter(action=action)
        if data.get("outcome"):
            queryset = queryset.filter(outcome=data["outcome"])
        if data.get("since"):
            queryset = queryset.filter(occurred_at__gte=data["since"])
        if data.get("until"):
            queryset = queryset.filter(occurred_at__lte=data["until"])
        if data.get("correlation_id"):
            queryset = queryset.filter(correlation_id=data["correlation_id"])
        if data.get("q"):
            queryset = queryset.filter(reasons__icontains=data["q"])
        return queryset

    @staticmethod
    def token(event) -> str:
        return base64.urlsafe_b64encode(f"{event.occurred_at.isoformat()}|{event.pk}".encode()).decode()

    def page(self, queryset) -> tuple[list[AuditEvent], str | None]:
        """Newest first, keyset-paginated: (events, cursor of the next page or None)."""
        queryset = self.filter(queryset).order_by("-occurred_at", "-id")
        after = self.cleaned_data.get("after")
        if after:
            when, event_id = after
            queryset = queryset.filter(Q(occurred_at__gt=when) | Q(occurred_at=when, id__gt=event_id))
        cursor = self.cleaned_data.get("cursor")
        if cursor:
            when, event_id = cursor
            queryset = queryset.filter(Q(occurred_at__lt=when) | Q(occurred_at=when, id__lt=event_id))
        events = list(queryset[: self.page_size + 1])
        if len(events) <= self.page_size:
            return events, None
        last = events[self.page_size - 1]
        return events[: self.page_size], self.token(last)
