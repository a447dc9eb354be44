"""Running a websocket scenario (consumers over ASGI, the real Redis channel layer) in a test."""

from __future__ import annotations

import asyncio


def run_scenario(coro):
    """asyncio.run for consumer tests, with two differences that a full suite needs.

    The channel layer is made afresh for this loop and dropped after: channels_redis refuses a
    receive() from a second event loop while a consumer of an earlier test's (closed) loop still
    counts as receiving ("Two event loops are trying to receive() on one channel layer at once").
    And tasks left behind (a consumer still reading the channel layer) get five seconds to take
    their cancellation, not for ever.
    """
    from channels.layers import channel_layers

    channel_layers.backends.clear()
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.wait(pending, timeout=5))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
        channel_layers.backends.clear()
