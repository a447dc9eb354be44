from django.urls import path

from . import views

app_name = "audit"

urlpatterns = [
    path("", views.timeline, name="timeline"),
    path("trace/<str:correlation_id>/", views.trace, name="trace"),
    path("export.<str:fmt>", views.export, name="export"),
]
