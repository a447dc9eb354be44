"""Finance alerts: budget thresholds crossed, and agents whose spend rate jumps.

A notification is created once per threshold per budget period (or once per
agent per day for a spike): a unique key makes a second attempt a no-op even
under concurrency. Delivery (email, optional signed webhook) happens after
commit, in a Celery task, so a rolled-back settlement alerts nobody.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
import urllib.request

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.mail import send_mail
from django.db import connection, transaction
from django.utils import timezone

logger = logging.getLogger(__name__)

CREATE_SQL = """
INSERT INTO billing_notification (kind, budget_id, agent_id, period_start, threshold, key, message, created_at, webhook_status)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, '')
ON CONFLICT (key) DO NOTHING RETURNING id
"""


def _create(*, kind, key, message, period, budget_id=None, agent_id=None, threshold=None) -> int | None:
    with connection.cursor() as cursor:
        cursor.execute(CREATE_SQL, [kind, budget_id, agent_id, period, threshold, key, message[:500], timezone.now()])
        row = cursor.fetchone()
    if row is None:
        return None
    from .tasks import alert_deliver_task

    notification_id = row[0]
    # robust: a broker that is down must not turn a committed settlement into an error
    transaction.on_commit(lambda: alert_deliver_task.delay(notification_id), robust=True)
    return notification_id


def check_thresholds(*, period_ids) -> list[int]:
    from .models import BudgetPeriod
    from .services import dollars

    created = []
    periods = BudgetPeriod.objects.filter(pk__in=period_ids).select_related("budget__team", "budget__agent")
    for period in periods:
        budget = period.budget
        limit = budget.monthly_limit_micros
        used = period.spent_micros * 100 // limit if limit else 100
        for threshold in budget.thresholds:
            if used < threshold:
                break
            made = _create(
                kind="threshold", budget_id=budget.pk, period=period.period_start, threshold=threshold,
                key=f"threshold:{budget.pk}:{period.period_start.isoformat()}:{threshold}",
                message=f"Budget {budget.label} has used {threshold}% of its monthly limit "
                        f"({dollars(period.spent_micros)} of {dollars(limit)}) for {period.period_start:%B %Y}.",
            )
            if made:
                created.append(made)
    return created


SPIKE_SQL = """
SELECT COALESCE(SUM(cost_micros) FILTER (WHERE occurred_at >= %s), 0),
       COALESCE(SUM(cost_micros) FILTER (WHERE occurred_at < %s), 0)
FROM billing_ledgerentry WHERE agent_id = %s AND occurred_at >= %s
"""


def check_spike(*, agent, at: dt.datetime) -> int | None:
    """Spend in the last hour well above the agent's own hourly average of the week before."""
    from .services import dollars, period_start

    hour_ago = at - dt.timedelta(hours=1)
    window_start = hour_ago - dt.timedelta(days=7)
    with connection.cursor() as cursor:
        cursor.execute(SPIKE_SQL, [hour_ago, hour_ago, agent.pk, window_start])
        last_hour, before = cursor.fetchone()
    baseline = before / (7 * 24)
    if before == 0 or last_hour < settings.WARDEN_SPIKE_MIN_MICROS or last_hour < settings.WARDEN_SPIKE_FACTOR * baseline:
        return None
    return _create(
        kind="spike", agent_id=agent.pk, period=period_start(at),
        key=f"spike:{agent.pk}:{at.date().isoformat()}",
        message=f"Agent {agent.name} spent {dollars(last_hour)} in the last hour, "
                f"{last_hour / baseline:.0f}x its hourly average of the past week ({dollars(int(baseline))}).",
    )


def sign(body: bytes, secret: str) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def post_signed(url: str, secret: str, payload: dict) -> int:
    """POST JSON to a webhook with `X-Warden-Signature: sha256=<hmac>`; its HTTP status (OSError if it failed).
    One way for every webhook Warden calls (budget alerts, approvals, anomaly alerts)."""
    body = json.dumps(payload).encode()
    headers = {"Content-Type": "application/json", "X-Warden-Signature": sign(body, secret)}
    with urllib.request.urlopen(urllib.request.Request(url, data=body, headers=headers, method="POST"), timeout=5) as response:
        return response.status


def deliver(notification_id: int) -> None:
    """Email finance and call the webhook; record what happened on the notification."""
    from .models import Notification

    notification = Notification.objects.filter(pk=notification_id).first()
    if notification is None:
        return
    updates = {}
    if notification.emailed_at is None:
        recipients = list(
            get_user_model().objects.filter(groups__name="finance", is_active=True).exclude(email="")
            .values_list("email", flat=True)
        )
        if recipients:
            send_mail(f"[Warden] {notification.get_kind_display()}", notification.message,
                      settings.DEFAULT_FROM_EMAIL, recipients)
            updates["emailed_at"] = timezone.now()
    url = settings.WARDEN_ALERT_WEBHOOK_URL
    if url and not notification.webhook_status.startswith("2"):
        payload = {"id": notification.pk, "kind": notification.kind, "message": notification.message,
                   "threshold": notification.threshold, "period": notification.period_start.isoformat(),
                   "created_at": notification.created_at.isoformat()}
        try:
            updates["webhook_status"] = str(post_signed(url, settings.WARDEN_ALERT_WEBHOOK_SECRET, payload))
        except OSError as exc:
            updates["webhook_status"] = f"failed: {type(exc).__name__}"[:100]
            logger.warning("alert webhook failed", extra={"notification": notification.pk})
    if updates:
        Notification.objects.filter(pk=notification.pk).update(**updates)
    if updates.get("webhook_status", "").startswith("failed"):
        raise ConnectionError(updates["webhook_status"])  # the task retries
