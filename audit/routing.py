from django.urls import path

from .consumers import TimelineConsumer

websocket_urlpatterns = [path("ws/audit/", TimelineConsumer.as_asgi())]
