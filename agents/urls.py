from django.urls import path

from . import views

app_name = "agents"

urlpatterns = [
    path("", views.agent_list, name="list"),
    path("new/", views.agent_register, name="register"),
    path("teams/", views.team_list, name="teams"),
    path("<uuid:agent_id>/", views.agent_detail, name="detail"),
    path("<uuid:agent_id>/edit/", views.agent_edit, name="edit"),
    *[
        path(f"<uuid:agent_id>/{verb}/", views.agent_lifecycle, {"verb": verb}, name=verb)
        for verb in views.LIFECYCLE
    ],
    path("<uuid:agent_id>/keys/", views.key_issue, name="key-issue"),
    path("<uuid:agent_id>/keys/<uuid:key_id>/revoke/", views.key_revoke, name="key-revoke"),
    path("<uuid:agent_id>/keys/<uuid:key_id>/rotate/", views.key_rotate, name="key-rotate"),
    path("<uuid:agent_id>/delegations/", views.delegation_create, name="delegate"),
    path("<uuid:agent_id>/budget-requests/", views.budget_increase_request, name="budget-request"),
    path("delegations/<uuid:delegation_id>/revoke/", views.delegation_revoke, name="delegation-revoke"),
]
