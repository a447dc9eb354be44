"""/api/v1/: each app's API routes, mounted in one place."""

from django.urls import include, path

from . import views

urlpatterns = [
    path("me/", views.MeView.as_view(), name="api-me"),
    path("actions/", views.ActionListView.as_view(), name="api-actions"),
    path("actions/<uuid:action_id>/", views.ActionDetailView.as_view(), name="api-action"),
    path("actions/<uuid:action_id>/complete/", views.ActionCompleteView.as_view(), name="api-action-complete"),
    path("policies/", views.PolicyListView.as_view(), name="api-policies"),
    path("policies/validate/", views.PolicyValidateView.as_view(), name="api-policy-validate"),
    path("policies/simulate/", views.PolicySimulateView.as_view(), name="api-policy-simulate"),
    path("policies/sets/", views.PolicySetListView.as_view(), name="api-policy-sets"),
    path("policies/<slug:name>/", views.PolicyDetailView.as_view(), name="api-policy"),
    path("policies/<slug:name>/versions/", views.PolicyVersionsView.as_view(), name="api-policy-versions"),
    path("policies/<slug:name>/restore/", views.PolicyRestoreView.as_view(), name="api-policy-restore"),
    path("policies/<slug:name>/enable/", views.PolicyToggleView.as_view(enabled=True), name="api-policy-enable"),
    path("policies/<slug:name>/disable/", views.PolicyToggleView.as_view(enabled=False), name="api-policy-disable"),
    path("roles/", views.RoleListView.as_view(), name="api-roles"),
    path("roles/<slug:name>/", views.RoleDetailView.as_view(), name="api-role"),
    path("agents/<uuid:agent_id>/roles/", views.AgentGrantListView.as_view(), name="api-agent-grants"),
    path("agents/<uuid:agent_id>/roles/<int:grant_id>/", views.AgentGrantDetailView.as_view(), name="api-agent-grant"),
    path("approvals/", views.ApprovalListView.as_view(), name="api-approvals"),
    path("approvals/<uuid:approval_id>/", views.ApprovalDetailView.as_view(), name="api-approval"),
    path("approvals/<uuid:approval_id>/approve/", views.ApprovalDecideView.as_view(verdict="approve"),
         name="api-approval-approve"),
    path("approvals/<uuid:approval_id>/deny/", views.ApprovalDecideView.as_view(verdict="deny"), name="api-approval-deny"),
    path("budgets/<int:budget_id>/increase-requests/", views.BudgetIncreaseRequestView.as_view(),
         name="api-budget-increase-requests"),
    path("data-views/", views.DataViewListView.as_view(), name="api-data-views"),
    path("data-views/<slug:name>/", views.DataViewDetailView.as_view(), name="api-data-view"),
    path("data-views/<slug:name>/read/", views.DataViewReadView.as_view(), name="api-data-view-read"),
    path("", include("agents.api.urls")),
    path("", include("billing.api.urls")),
    path("", include("audit.api.urls")),
]
