from django.urls import path

from . import views

urlpatterns = [
    path("agents/", views.AgentListView.as_view(), name="api-agents"),
    path("agents/me/", views.AgentSelfView.as_view(), name="api-agent-self"),
    path("agents/<uuid:agent_id>/", views.AgentDetailView.as_view(), name="api-agent"),
    path("agents/<uuid:agent_id>/suspend/", views.AgentSuspendView.as_view(), name="api-agent-suspend"),
    path("agents/<uuid:agent_id>/resume/", views.AgentResumeView.as_view(), name="api-agent-resume"),
    path("agents/<uuid:agent_id>/retire/", views.AgentRetireView.as_view(), name="api-agent-retire"),
    path("agents/<uuid:agent_id>/activate/", views.AgentActivateView.as_view(), name="api-agent-activate"),
    path("agents/<uuid:agent_id>/keys/", views.AgentKeyListView.as_view(), name="api-agent-keys"),
    path("agents/<uuid:agent_id>/keys/<uuid:key_id>/", views.AgentKeyDetailView.as_view(), name="api-agent-key"),
    path("agents/<uuid:agent_id>/keys/<uuid:key_id>/rotate/", views.AgentKeyRotateView.as_view(), name="api-agent-key-rotate"),
    path("agents/<uuid:agent_id>/delegations/", views.AgentDelegationListView.as_view(), name="api-agent-delegations"),
    path("agents/<uuid:agent_id>/runs/", views.AgentRunListView.as_view(), name="api-agent-runs"),
    path("runs/", views.RunListView.as_view(), name="api-runs"),
    path("runs/<uuid:run_id>/", views.RunDetailView.as_view(), name="api-run"),
    path("runs/<uuid:run_id>/cancel/", views.RunCancelView.as_view(), name="api-run-cancel"),
    path("mcp-servers/", views.McpServerListView.as_view(), name="api-mcp-servers"),
    path("mcp-servers/<str:name>/", views.McpServerDetailView.as_view(), name="api-mcp-server"),
    path("delegations/", views.AgentDelegateView.as_view(), name="api-delegations"),
    path("delegations/<uuid:delegation_id>/revoke/", views.DelegationRevokeView.as_view(), name="api-delegation-revoke"),
]
