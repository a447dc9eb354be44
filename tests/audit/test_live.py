"""The live timeline over a real websocket and the real Redis channel layer."""

import asyncio

import pytest
import json

from asgiref.testing import ApplicationCommunicator
from channels.routing import URLRouter
from django.db import transaction

from audit.routing import websocket_urlpatterns
from tests.sockets import run_scenario


class Socket(ApplicationCommunicator):
    """A websocket client speaking ASGI to the consumer (channels.testing needs daphne)."""

    async def connect(self):
        await self.send_input({"type": "websocket.connect"})
        message = await self.receive_output(3)
        return message["type"] == "websocket.accept", message.get("code")

    async def receive_json_from(self, timeout=3):
        message = await self.receive_output(timeout)
        assert message["type"] == "websocket.send", message
        return json.loads(message["text"])

    async def settle(self):
        """Let batches of earlier events (set-up) arrive, and drop them."""
        await asyncio.sleep(0.4)
        while not await self.receive_nothing(timeout=0.05):
            await self.receive_output(1)

    async def disconnect(self):
        await self.send_input({"type": "websocket.disconnect", "code": 1000})
        await self.wait(1)


@pytest.fixture(autouse=True)
def short_lived_thread_connections():
    """The consumer's database calls run on worker threads; close their connections after
    each call so nothing outlives the test (the database is flushed and dropped after)."""
    from django.db import connections

    settings_dict = connections.databases["default"]
    previous = settings_dict["CONN_MAX_AGE"]
    settings_dict["CONN_MAX_AGE"] = 0
    yield
    settings_dict["CONN_MAX_AGE"] = previous


def communicator(user, query=""):
    scope = {"type": "websocket", "path": "/ws/audit/", "query_string": query.encode(), "headers": [],
             "subprotocols": [], "user": user}
    return Socket(URLRouter(websocket_urlpatterns), scope)


def run(coro):
    return run_scenario(coro)


@pytest.mark.django_db(transaction=True)
def test_a_committed_event_is_pushed_and_a_rolled_back_one_is_not(personas, make_agent):
    from agents import services

    agent = make_agent("live-one")

    async def scenario():
        comm = communicator(personas["security"])
        connected, _ = await comm.connect()
        assert connected
        await comm.settle()
        from channels.db import database_sync_to_async

        def rolled_back():
            with transaction.atomic():
                services.agent_suspend(agent=agent, by=personas["security"], reason="never happened")
                transaction.set_rollback(True)

        await database_sync_to_async(rolled_back)()
        assert await comm.receive_nothing(timeout=1)
        await database_sync_to_async(services.agent_suspend)(agent=agent, by=personas["security"], reason="live drill")
        message = await comm.receive_json_from(timeout=3)
        assert "agent.suspend" in message["html"] and "live drill" in message["html"]
        assert message["first"] <= message["last"]
        await comm.disconnect()

    run(scenario())


@pytest.mark.django_db(transaction=True)
def test_an_idle_page_stays_connected_past_the_channel_layers_blocking_read(personas, make_agent):
    """channels_redis blocks 5 s on BZPOPMIN; a Redis read timeout at or under that killed idle sockets."""
    from agents import services

    agent = make_agent("quiet")

    async def scenario():
        from channels.db import database_sync_to_async

        comm = communicator(personas["security"])
        connected, _ = await comm.connect()
        assert connected
        await comm.settle()
        await asyncio.sleep(6.5)  # longer than one idle blocking read
        await database_sync_to_async(services.agent_suspend)(agent=agent, by=personas["security"], reason="after a lull")
        message = await comm.receive_json_from(timeout=3)
        assert "after a lull" in message["html"]
        await comm.disconnect()

    run(scenario())


@pytest.mark.django_db(transaction=True)
def test_the_push_respects_the_pages_filters(personas, make_agent):
    from agents import services

    watched, other = make_agent("watched"), make_agent("other")

    async def scenario():
        from channels.db import database_sync_to_async

        comm = communicator(personas["security"], "agent=watched")
        assert (await comm.connect())[0]
        await comm.settle()
        await database_sync_to_async(services.agent_suspend)(agent=other, by=personas["security"], reason="x")
        first = await comm.receive_json_from(timeout=3)
        assert first["html"] == ""  # numbered, so no gap is seen, but not shown
        await database_sync_to_async(services.agent_suspend)(agent=watched, by=personas["security"], reason="y")
        second = await comm.receive_json_from(timeout=3)
        assert "watched" in second["html"] and second["first"] == first["last"] + 1
        await comm.disconnect()

    run(scenario())


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("persona", ["admin", "finance", "viewer", "outsider"])
def test_only_security_may_watch(personas, persona):
    async def scenario():
        comm = communicator(personas[persona])
        connected, code = await comm.connect()
        assert not connected and code == 4403

    run(scenario())


@pytest.mark.django_db(transaction=True)
def test_anonymous_visitors_may_not_watch(db):
    from django.contrib.auth.models import AnonymousUser

    async def scenario():
        connected, code = await communicator(AnonymousUser()).connect()
        assert not connected

    run(scenario())


def test_missed_events_are_fetched_after_the_newest_shown(client_for, bot, policy):
    from audit.filters import AuditFilter
    from audit.models import AuditEvent
    from tests.conftest import ask

    policy("all", "permit(principal, action, resource);")
    ask(bot)
    newest = AuditEvent.objects.order_by("-occurred_at", "-id").first()
    ask(bot, resource="gpt-4o")
    fragment = client_for("security").get(f"/audit/?after={AuditFilter.token(newest)}", HTTP_HX_REQUEST="true").content.decode()
    assert "gpt-4o" in fragment and f'data-id="{newest.pk}"' not in fragment
