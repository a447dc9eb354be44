"""/api/v1/: each app's API routes, mounted in one place."""

from django.urls import include, path

from . import views

urlpatterns = [
    path("me/", views.MeView.as_view(), name="api-me"),
    path("", include("agents.api.urls")),
]
