"""A fixed pool of daemon threads for the ASGI app's synchronous work (Django's WSGI handler, the gateway's
database hops).

Why not ThreadPoolExecutor: its threads are joined when the interpreter exits. A request cut off by a shutdown
(the event loop gone while its thread waits to hand the response back, in asgiref's AsyncToSync) then holds the
process forever: seen as a test run that printed its summary and never exited. Daemon threads do not hold it; a
request cut off that way is lost as it would be with the process killed (its transaction is rolled back by
PostgreSQL when the connection goes).
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Executor, Future


class DaemonThreadPool(Executor):
    def __init__(self, max_workers: int, thread_name_prefix: str):
        self._max_workers = max_workers
        self._prefix = thread_name_prefix
        self._work: queue.SimpleQueue = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._shutdown = False

    def submit(self, fn, /, *args, **kwargs) -> Future:
        future: Future = Future()
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new work after shutdown")
            self._work.put((future, fn, args, kwargs))
            if len(self._threads) < self._max_workers:
                thread = threading.Thread(target=self._run, name=f"{self._prefix}_{len(self._threads)}", daemon=True)
                self._threads.append(thread)
                thread.start()
        return future

    def _run(self) -> None:
        while True:
            item = self._work.get()
            if item is None:
                return
            future, fn, args, kwargs = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn(*args, **kwargs)
            except BaseException as error:  # handed to whoever waits for it, as ThreadPoolExecutor does
                future.set_exception(error)
            else:
                future.set_result(result)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shutdown = True
            threads = list(self._threads)
        for _ in threads:
            self._work.put(None)
        if wait:
            for thread in threads:
                thread.join()
