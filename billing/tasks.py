"""Thin Celery tasks: ids in, a service does the work."""

from celery import shared_task

from . import alerts


@shared_task(name="billing.alert_deliver", autoretry_for=(ConnectionError,), retry_backoff=30, max_retries=5)
def alert_deliver_task(notification_id: int) -> None:
    alerts.deliver(notification_id)


@shared_task(name="billing.reservations_sweep")
def reservations_sweep_task() -> int:
    from governance.gate import actions_expire

    return actions_expire()
