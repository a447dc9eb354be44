from django.urls import path

from . import run_views

app_name = "runs"

urlpatterns = [
    path("", run_views.run_list, name="list"),
    path("<uuid:run_id>/", run_views.run_detail, name="detail"),
    path("<uuid:run_id>/cancel/", run_views.run_cancel, name="cancel"),
    path("start/<uuid:agent_id>/", run_views.run_start, name="start"),
    path("schedules/<uuid:agent_id>/", run_views.schedule_create, name="schedule-create"),
    path("schedules/<int:schedule_id>/toggle/", run_views.schedule_toggle, name="schedule-toggle"),
]
