"""The live approval queue: every open queue page sees requests arrive and get decided."""

from __future__ import annotations

from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.template.loader import render_to_string

from .access import can
from .approval_notices import QUEUE_GROUP
from .filters import ApprovalFilter
from .selectors import approval_list


def still_allowed(scope, capability: str):
    """The person behind a websocket, read again now: None if they signed out (or their session lapsed), were
    switched off, or lost the capability since the page opened. Consumers check it for every message."""
    from django.contrib.auth import get_user_model
    from django.contrib.sessions.models import Session
    from django.utils import timezone

    session = scope.get("session")
    user = get_user_model().objects.filter(pk=getattr(scope.get("user"), "pk", None), is_active=True).first()
    live = session is not None and session.session_key is not None and Session.objects.filter(
        session_key=session.session_key, expire_date__gt=timezone.now()).exists()
    if user is None or not live or not can(user, capability):
        return None
    return user


class ApprovalQueueConsumer(AsyncJsonWebsocketConsumer):
    """Same permission, same filter and same row partial as the page (governance.views.approval_list)."""

    async def connect(self):
        user = self.scope.get("user")
        if user is None or not await database_sync_to_async(can)(user, "approval.view"):
            await self.close(code=4403)
            return
        query = {key: values[-1] for key, values in parse_qs(self.scope.get("query_string", b"").decode()).items()}
        self.filters = ApprovalFilter(query)
        if not self.filters.is_valid():
            await self.close(code=4400)
            return
        await self.channel_layer.group_add(QUEUE_GROUP, self.channel_name)
        await self.accept()

    async def disconnect(self, code):
        await self.channel_layer.group_discard(QUEUE_GROUP, self.channel_name)

    revoked = False

    async def approvals_changed(self, message):
        html = await database_sync_to_async(self._render)(message)
        if self.revoked:
            await self.close(code=4403)
            return
        if html is None:
            return  # another group's request: nothing of it reaches this page
        await self.send_json({"id": message["id"], "event": message["event"], "by": message["by"], "html": html})

    def _render(self, message) -> str | None:
        """The row as this person sees it now; None when it is not theirs to see, "" for a new one outside the
        filter (the page refreshes its count for it). The person is read again for every message: whoever
        signed out, was switched off or left the group since the page opened stops receiving at once."""
        from .views import approval_rows

        user = still_allowed(self.scope, "approval.view")
        if user is None:
            self.revoked = True
            return None
        visible = approval_list(user=user).filter(pk=message["id"])
        approval = visible.first()
        if approval is None:
            return None
        if message["event"] == "created" and not self.filters.filter(visible).exists():
            return ""
        row = approval_rows(user, [approval])[0]
        return render_to_string("governance/approval_list.html#row", {"row": row}).strip()
