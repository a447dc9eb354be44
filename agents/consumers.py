"""Live runs: the runs page and a run's page hear that a run changed, then fetch it over HTTP.

Nothing of a run is rendered here: the message names the run (and the step) that changed, and the page
reads it with the viewer's own permissions (agents/run_views.py). The viewer is checked again for every
message; one who signed out or lost `run.view` is disconnected (4403).
"""

from __future__ import annotations

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from governance.access import can
from governance.consumers import still_allowed

from .runtime.live import RUNS_GROUP, run_group


class RunsConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self):
        user = self.scope.get("user")
        if user is None or not await database_sync_to_async(can)(user, "run.view"):
            await self.close(code=4403)
            return
        run_id = self.scope["url_route"]["kwargs"].get("run_id")
        if run_id is not None and not await database_sync_to_async(self._visible)(user, run_id):
            await self.close(code=4404)
            return
        self.group = run_group(run_id) if run_id is not None else RUNS_GROUP
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()

    @staticmethod
    def _visible(user, run_id) -> bool:
        from .runtime.selectors import run_list

        return run_list(user=user).filter(pk=run_id).exists()

    async def disconnect(self, code):
        if getattr(self, "group", None):
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def run_changed(self, message):
        if await database_sync_to_async(still_allowed)(self.scope, "run.view") is None:
            await self.close(code=4403)
            return
        await self.send_json({"id": message["id"], "step": message.get("step"), "status": message.get("status")})
