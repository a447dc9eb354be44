"""Websocket routes of every app (live pages add theirs here)."""

websocket_urlpatterns: list = []
