"""Thin Celery tasks of the governance domain: ids in, a service does the work."""

from celery import shared_task

from . import approval_notices, approvals


@shared_task(name="governance.approval_email")
def approval_email_task(approval_id: str, kind: str) -> int:
    return approval_notices.email(approval_id, kind)


@shared_task(name="governance.approval_webhook", autoretry_for=(ConnectionError,), retry_backoff=30, max_retries=5)
def approval_webhook_task(approval_id: str, kind: str) -> None:
    approval_notices.webhook(approval_id, kind)


@shared_task(name="governance.approvals_expire")
def approvals_expire_task() -> int:
    return approvals.approvals_expire()


@shared_task(name="governance.approvals_remind")
def approvals_remind_task() -> int:
    return approvals.approvals_remind()


@shared_task(name="governance.anomaly_scan")
def anomaly_scan_task() -> int:
    from .anomalies import anomaly_scan

    return len(anomaly_scan())


@shared_task(name="governance.alert_deliver", autoretry_for=(ConnectionError,), retry_backoff=30, max_retries=5)
def alert_deliver(alert_id: str) -> None:
    from .anomalies import deliver

    deliver(alert_id)
