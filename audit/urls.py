from django.urls import path

from . import views

app_name = "audit"

urlpatterns = [
    path("", views.timeline, name="timeline"),
    path("trace/<str:correlation_id>/", views.trace, name="trace"),
    path("verify/", views.verify_chains, name="verify"),
    path("export.<str:fmt>", views.export, name="export"),
    path("exports/", views.export_jobs, name="export-jobs"),
    path("exports/<uuid:export_id>/", views.export_job, name="export-job"),
    path("exports/<uuid:export_id>/download", views.export_download, name="export-download"),
]
