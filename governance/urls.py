from django.contrib.auth import views as auth_views
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from . import views

section_patterns = [
    path("policies/", views.policy_list, name="policies"),
    path("policies/new/", views.policy_new, name="policy-new"),
    path("policies/validate/", views.policy_validate, name="policy-validate"),
    path("policies/simulate/", views.policy_simulate, name="policy-simulate"),
    path("policies/sets/", views.policy_sets, name="policy-sets"),
    path("policies/roles/", views.role_list, name="roles"),
    path("policies/roles/<slug:name>/", views.role_edit, name="role-edit"),
    path("policies/<slug:name>/", views.policy_detail, name="policy"),
    path("policies/<slug:name>/edit/", views.policy_edit, name="policy-edit"),
    path("policies/<slug:name>/restore/", views.policy_restore, name="policy-restore"),
    path("policies/<slug:name>/toggle/", views.policy_toggle, name="policy-toggle"),
    path("agents/<uuid:agent_id>/roles/", views.grant_create, name="grant-create"),
    path("agents/<uuid:agent_id>/roles/<int:grant_id>/revoke/", views.grant_revoke, name="grant-revoke"),
    path("approvals/", views.approval_list, name="approvals"),
    path("approvals/badge/", views.approval_badge, name="approval-badge"),
    path("approvals/<uuid:approval_id>/", views.approval_detail, name="approval"),
    path("approvals/<uuid:approval_id>/approve/", views.approval_decide, {"verdict": "approve"}, name="approval-approve"),
    path("approvals/<uuid:approval_id>/deny/", views.approval_decide, {"verdict": "deny"}, name="approval-deny"),
    path("data-views/", views.data_view_list, name="data-views"),
    path("alerts/", views.alert_list, name="alerts"),
    path("data-views/<slug:name>/", views.data_view_edit, name="data-view-edit"),
]

urlpatterns = [
    path("", views.home, name="home"),
    path("healthz", views.healthz, name="healthz"),
    path("readyz", views.readyz, name="readyz"),
    path("metrics", views.metrics, name="metrics"),
    path("login/", views.SignInView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("account/tokens/", views.api_tokens, name="api-tokens"),
    path("", include((section_patterns, "governance"))),
    path("agents/", include("agents.urls")),
    path("runs/", include("agents.run_urls")),
    path("mcp-servers/", include("agents.gateway.urls")),
    path("budgets/", include("billing.urls")),
    path("audit/", include("audit.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("api/v1/", include("governance.api.urls")),
]

handler400 = "governance.errors.bad_request"
handler403 = "governance.errors.permission_denied"
handler404 = "governance.errors.not_found"
handler500 = "governance.errors.server_error"
