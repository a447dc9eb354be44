"""Websocket routes of every app."""

from django.urls import path

from agents.consumers import RunsConsumer
from audit.routing import websocket_urlpatterns as audit_routes

from .consumers import ApprovalQueueConsumer

websocket_urlpatterns: list = [
    *audit_routes,
    path("ws/approvals/", ApprovalQueueConsumer.as_asgi()),
    path("ws/runs/", RunsConsumer.as_asgi()),
    path("ws/runs/<uuid:run_id>/", RunsConsumer.as_asgi()),
]
