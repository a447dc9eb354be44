"""Websocket routes of every app."""

from audit.routing import websocket_urlpatterns as audit_routes

websocket_urlpatterns: list = [*audit_routes]
