from django.urls import path

from . import views

urlpatterns = [
    path("audit/events/", views.EventListView.as_view(), name="api-audit-events"),
    path("audit/verify/", views.VerifyView.as_view(), name="api-audit-verify"),
]
