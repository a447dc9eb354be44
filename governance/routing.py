"""Websocket routes of every app."""

from django.urls import path

from audit.routing import websocket_urlpatterns as audit_routes

from .consumers import ApprovalQueueConsumer

websocket_urlpatterns: list = [*audit_routes, path("ws/approvals/", ApprovalQueueConsumer.as_asgi())]
