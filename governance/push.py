"""Messages to live pages and waiting agents, sent after commit from a daemon thread.

A request or a task only puts the message on an in-process queue after its
transaction commits (nothing for a rollback), which costs it nothing; one
daemon thread with its own event loop sends them on the channel layer. If
Redis is slow or gone, no request thread waits for it: the message is lost,
and pages and waiting agents catch up from PostgreSQL (a page on reconnect,
an agent when its wait ends).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time

from channels.layers import get_channel_layer
from django.db import transaction

logger = logging.getLogger(__name__)

_queue: "queue.SimpleQueue[tuple[str, dict]]" = queue.SimpleQueue()
_thread: threading.Thread | None = None
_lock = threading.Lock()


def push_on_commit(group: str, message: dict) -> None:
    transaction.on_commit(lambda: _enqueue(group, message))


def _enqueue(group: str, message: dict) -> None:
    global _thread
    if _thread is None or not _thread.is_alive():
        with _lock:
            if _thread is None or not _thread.is_alive():
                _thread = threading.Thread(target=_run, name="warden-push", daemon=True)
                _thread.start()
    _queue.put((group, message))


TRIES = 3
_failing = threading.Event()  # set while Redis is down: fewer tries per message, so the queue does not back up


def deliver(loop: asyncio.AbstractEventLoop, attempt, *, what: str, tries: int = TRIES) -> bool:
    """Run the coroutine `attempt()` makes on `loop`, a few times before giving up.

    After Redis restarts, the first command on each pooled connection fails ("Connection closed by
    server") and the next one opens a new connection: without a second try, the first message after
    every restart was lost, and a quiet page never learnt it had missed it. A Redis that stays down
    costs this thread two quick tries a message (the second for the stale connection of a Redis that
    came back), never a request.
    """
    failing = _failing.is_set()
    tries = 2 if failing else tries
    for n in range(1, tries + 1):
        try:
            loop.run_until_complete(asyncio.wait_for(attempt(), timeout=5))
            _failing.clear()
            return True
        except Exception:  # Redis slow or down: the pages and agents catch up from PostgreSQL
            if n == tries:
                _failing.set()
                logger.warning("live push failed after %d tries: %s", tries, what, exc_info=True)
                return False
            if not failing:
                time.sleep(0.2 * n)
    return False


def _run() -> None:
    loop = asyncio.new_event_loop()
    layer = get_channel_layer()
    while True:
        group, message = _queue.get()
        deliver(loop, lambda: layer.group_send(group, message), what=f"to {group}")
