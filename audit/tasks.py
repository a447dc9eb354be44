from celery import shared_task

from . import services


@shared_task(name="audit.checkpoint")
def checkpoint_task() -> int:
    return services.checkpoint_create().pk
