"""Telling people about approval requests: live pages, long-polling agents, e-mail and a signed webhook.

Everything happens after the transaction commits (nothing for a rollback):

- the channel layer group `approvals` gets every change, and each open queue
  page (governance.consumers) re-renders what its user may see;
- the group `action.<id>` gets an escalated action's outcome, and a waiting
  `GET /api/v1/actions/{id}/?wait=N` answers at once (governance.asgi);
- new requests and reminders go by e-mail to the group and, if
  WARDEN_APPROVAL_WEBHOOK_URL is set, as JSON signed with
  WARDEN_APPROVAL_WEBHOOK_SECRET (`X-Warden-Signature: sha256=<hmac>`, like the
  budget alerts), in a Celery task that retries.

Redis is not needed for anything to be decided: if it is down, pages and
waiting agents catch up from PostgreSQL (a page on reconnect, an agent when
its wait ends), and a request still commits (sending mail and webhooks is
robust to a missing broker; the reminder goes out later anyway).
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.mail import send_mail
from django.db import transaction
from django.urls import reverse

from .push import push_on_commit

logger = logging.getLogger(__name__)

QUEUE_GROUP = "approvals"
FINAL = ("approved", "denied", "expired")


def action_group(action_id) -> str:
    return f"action.{action_id}"


def announce_on_commit(approval, event: str, *, by=None) -> None:
    message = {"type": "approvals.changed", "id": str(approval.pk), "event": event, "group": approval.group,
               "by": by.get_username() if by is not None else ""}
    push_on_commit(QUEUE_GROUP, message)
    if approval.action_id and event in FINAL:
        push_on_commit(action_group(approval.action_id), {"type": "action.decided", "id": str(approval.action_id),
                                                          "event": event})
        from agents.runtime.services import runs_resume_on_commit

        runs_resume_on_commit(approval.action_id)  # a run Warden runs that waits on it goes on (or meets the no)
    if event == "created":
        deliver_on_commit(approval.pk, "created")


def deliver_on_commit(approval_id, kind: str) -> None:
    from .tasks import approval_email_task, approval_webhook_task

    def send():
        approval_email_task.delay(str(approval_id), kind)
        if settings.WARDEN_APPROVAL_WEBHOOK_URL:
            approval_webhook_task.delay(str(approval_id), kind)

    # robust: a broker that is down must not turn a committed request into an error (the reminder resends)
    transaction.on_commit(send, robust=True)


def link(approval) -> str:
    return settings.WARDEN_BASE_URL + reverse("governance:approval", kwargs={"approval_id": approval.pk})


def summary(approval) -> dict:
    """What a person (or a chat tool) needs to see at a glance."""
    from billing.services import dollars

    body = {"id": str(approval.pk), "kind": approval.kind, "group": approval.group,
            "groups": list(approval.groups or [approval.group]), "status": approval.status,
            "reasons": approval.reasons, "purpose": approval.purpose, "required_approvals": approval.required_approvals,
            "expires_at": approval.expires_at.isoformat() if approval.expires_at else None, "url": link(approval)}
    if approval.action_id:
        action = approval.action
        body.update(agent=action.agent.name, action=action.action, resource=action.resource,
                    estimated_cost=dollars(action.estimated_cost_micros))
    else:
        body.update(budget=approval.budget.label, requested_limit=dollars(approval.requested_limit_micros),
                    agent=approval.requested_by_agent.name if approval.requested_by_agent_id else None)
    return body


def _pending(approval_id: str):
    from .models import Approval

    approval = Approval.objects.select_related("action__agent", "budget__team", "budget__agent",
                                               "requested_by_agent").filter(pk=approval_id).first()
    return approval if approval is not None and approval.status == "pending" else None


def _headline(approval, info: dict, kind: str) -> str:
    what = (f"{info['agent']} asks for {info['action']} {info['resource']} ({info['estimated_cost']})"
            if approval.action_id else f"more budget for {info['budget']}: {info['requested_limit']} a month")
    groups = " and ".join(approval.groups or [approval.group])
    return f"{'Reminder: ' if kind == 'reminder' else ''}approval needed by {groups}: {what}"[:190]


def email(approval_id: str, kind: str) -> int:
    """E-mail the deciding group about a new request (or a reminder); how many were written to."""
    approval = _pending(approval_id)
    if approval is None:
        return 0
    info = summary(approval)
    text = "\n".join([_headline(approval, info, kind), "", *approval.reasons, "",
                      f"What it says it is for: {approval.purpose or '(nothing)'}",
                      f"Decide by {info['expires_at']}: {info['url']}"])
    # Every group the request names (all must approve); not those who have already given their verdict.
    recipients = list(get_user_model().objects.filter(groups__name__in=approval.groups or [approval.group],
                                                      is_active=True)
                      .exclude(email="").exclude(pk__in=approval.decisions.values("decided_by"))
                      .values_list("email", flat=True).distinct().order_by("email"))
    if recipients:
        send_mail(f"[Warden] {_headline(approval, info, kind)}", text, settings.DEFAULT_FROM_EMAIL, recipients)
    return len(recipients)


def webhook(approval_id: str, kind: str) -> None:
    """POST the request, signed, to WARDEN_APPROVAL_WEBHOOK_URL; ConnectionError (the task retries) if that fails."""
    from billing.alerts import post_signed

    url = settings.WARDEN_APPROVAL_WEBHOOK_URL
    approval = _pending(approval_id)
    if not url or approval is None:
        return
    info = summary(approval)
    try:
        post_signed(url, settings.WARDEN_APPROVAL_WEBHOOK_SECRET,
                    {"event": f"approval.{kind}", "text": f"{_headline(approval, info, kind)} {info['url']}",
                     "approval": info})
    except OSError as exc:
        logger.warning("approval webhook failed: %s", exc)
        raise ConnectionError(str(exc)) from None
