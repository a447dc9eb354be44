"""Thin Celery tasks: ids in, a service does the work."""

from celery import shared_task

from . import alerts, services


@shared_task(name="billing.alert_deliver", autoretry_for=(ConnectionError,), retry_backoff=30, max_retries=5)
def alert_deliver_task(notification_id: int) -> None:
    alerts.deliver(notification_id)


@shared_task(name="billing.reservations_sweep")
def reservations_sweep_task() -> int:
    return services.reservations_sweep()
