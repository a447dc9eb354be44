from celery import shared_task

from . import archive, services


@shared_task(name="audit.checkpoint")
def checkpoint_task() -> int:
    return services.checkpoint_create().pk


@shared_task(name="audit.archive")
def archive_task() -> int:
    """Move events past the retention to a compressed file (beat, every 6 hours); returns how many."""
    segment = archive.audit_archive()
    return segment.events if segment else 0


@shared_task(name="audit.export")
def export_task(export_id: str) -> int:
    from . import exports

    return exports.export_run(export_id).written


@shared_task(name="audit.exports_sweep")
def exports_sweep_task() -> int:
    from . import exports

    return exports.exports_sweep()
