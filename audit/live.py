"""Live timeline: committed events are pushed to open timelines within a second.

`audit_record` calls `publish_on_commit(event_id)`: after the transaction
commits (never for a rollback) the id goes on an in-process queue, which costs
the caller nothing measurable. A daemon thread with its own event loop gives
each event a number from a Redis counter and sends it to the timeline group.
Redis may drop a message (channels_redis drops for a full channel) or the
process may die with ids queued: the page sees the gap in the numbers, or its
socket reconnect, and fetches what it missed from PostgreSQL.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time

import redis
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import transaction

from governance.push import deliver


GROUP = "audit.timeline"
BATCH_SECONDS = 0.1
SEQUENCE_KEY = "warden:audit:live-seq"

_queue: "queue.SimpleQueue[int]" = queue.SimpleQueue()
_thread: threading.Thread | None = None
_lock = threading.Lock()


def publish_on_commit(event_id: int) -> None:
    transaction.on_commit(lambda: _enqueue(event_id))


def _enqueue(event_id: int) -> None:
    from governance.metrics import AUDIT_EVENTS, safely

    safely(AUDIT_EVENTS.inc)  # a committed event (this runs on commit)
    global _thread
    if _thread is None or not _thread.is_alive():
        with _lock:
            if _thread is None or not _thread.is_alive():
                _thread = threading.Thread(target=_run, name="warden-audit-live", daemon=True)
                _thread.start()
    _queue.put(event_id)


def _run() -> None:
    """Block on the queue in this daemon thread (never in an executor thread, which
    the interpreter would wait for at exit); send on one loop kept for the thread."""
    loop = asyncio.new_event_loop()
    layer = get_channel_layer()
    counter = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
    while True:
        ids = [_queue.get()]
        deadline = time.monotonic() + BATCH_SECONDS
        while (left := deadline - time.monotonic()) > 0:
            try:
                ids.append(_queue.get(timeout=left))
            except queue.Empty:
                break
        async def send(ids=ids):
            # A number taken twice (a try that failed after it) is a gap the page fills from PostgreSQL.
            last = counter.incrby(SEQUENCE_KEY, len(ids))
            await layer.group_send(GROUP, {"type": "audit.events", "ids": ids, "first": last - len(ids) + 1,
                                           "last": last})

        # Redis down: the events are safe in PostgreSQL; pages catch up on reconnect.
        deliver(loop, send, what=f"{len(ids)} audit events")
