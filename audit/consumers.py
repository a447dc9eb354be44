"""The websocket behind the live timeline: same permission, same filter, same partial."""

from __future__ import annotations

from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.template.loader import render_to_string

from governance.access import can

from .filters import AuditFilter
from .live import GROUP
from .models import AuditEvent


class TimelineConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self):
        user = self.scope.get("user")
        if user is None or not await database_sync_to_async(can)(user, "audit.view"):
            await self.close(code=4403)
            return
        query = {k: v[-1] for k, v in parse_qs(self.scope.get("query_string", b"").decode()).items()}
        query.pop("cursor", None)
        self.filters = AuditFilter(query)
        if not self.filters.is_valid():
            await self.close(code=4400)
            return
        await self.channel_layer.group_add(GROUP, self.channel_name)
        await self.accept()

    async def disconnect(self, code):
        await self.channel_layer.group_discard(GROUP, self.channel_name)

    async def audit_events(self, message):
        html = await database_sync_to_async(self._render)(message["ids"])
        # Every batch is sent, matching or not, so the page can tell a gap from filtered-out events.
        await self.send_json({"first": message["first"], "last": message["last"], "html": html})

    def _render(self, event_ids: list[int]) -> str:
        events = list(self.filters.filter(AuditEvent.objects.filter(pk__in=event_ids)).order_by("-occurred_at", "-id"))
        if not events:
            return ""
        return render_to_string("audit/timeline.html#rows", {"events": events, "live": True}).strip()
