"""Governance API: the gate for agents, policies and roles for people."""

from __future__ import annotations

from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from agents import selectors as agent_selectors
from agents.principal import AgentPrincipal
from governance import approvals, gate, services, simulation
from governance.access import can, capabilities_of, user_groups
from governance.api.base import CapabilityView, valid
from governance.api.pagination import Pagination
from governance.api.permissions import IsAgent
from governance.context import correlation_scope, get_correlation_id
from governance.exceptions import Conflict
from governance.filters import ApprovalFilter
from governance.models import Action, Policy, PolicySetVersion, RoleGrant, Role
from governance.selectors import (approval_context, approval_get, approval_list, data_view_get, data_view_list,
                                  policy_list)

from . import serializers as s


class MeOutput(serializers.Serializer):
    username = serializers.CharField()
    groups = serializers.ListField(child=serializers.CharField())
    capabilities = serializers.ListField(child=serializers.CharField())


class MeView(APIView):
    """Who the caller is and what its groups allow: the API twin of the navigation."""

    @extend_schema(responses=MeOutput)
    def get(self, request):
        user = request.user
        data = {
            "username": user.get_username(),
            "groups": sorted(user_groups(user)),
            "capabilities": sorted(capabilities_of(user)),
        }
        return Response(MeOutput(data).data)


# --- the gate over HTTP ----------------------------------------------------------------


def _action_for(request, action_id) -> Action:
    """The action if the caller may see it: its own agent's, or a person who may see agents."""
    queryset = Action.objects.select_related("agent", "approval")
    try:
        if isinstance(request.user, AgentPrincipal):
            return queryset.get(pk=action_id, agent_id=request.user.agent.pk)
        if can(request.user, "agent.view"):
            return queryset.get(pk=action_id)
    except (Action.DoesNotExist, ValueError):
        pass
    raise Http404("No such action.")


class ActionListView(APIView):
    permission_classes = [IsAgent]

    @extend_schema(request=s.ActionRequestInput, responses={201: s.ActionOutput})
    def post(self, request):
        data = valid(s.ActionRequestInput, request.data)
        principal: AgentPrincipal = request.user
        with correlation_scope(data.get("correlation_id") or get_correlation_id()):
            action = gate.request_action(
                agent=principal.agent,
                key=principal.key,
                action=data["action"],
                resource=data["resource"],
                context=data["context"],
                on_behalf_of=data.get("on_behalf_of"),
                idempotency_key=data.get("idempotency_key"),
            )
        return Response(s.action_output(action), status=status.HTTP_201_CREATED)


class ActionDetailView(APIView):
    """An action as it stands. With `?wait=N` (at most 30 s), a pending approval's answer is awaited:
    the server answers as soon as someone decides, or after N seconds, holding no thread meanwhile
    (governance/asgi.py: the wait happens on the event loop, between two reads through this view)."""

    permission_classes = [IsAuthenticated]

    @extend_schema(parameters=[s.ActionWaitInput], responses=s.ActionOutput)
    def get(self, request, action_id):
        valid(s.ActionWaitInput, request.query_params)
        return Response(s.action_output(_action_for(request, action_id)))


class ActionCompleteView(APIView):
    permission_classes = [IsAgent]

    @extend_schema(request=s.CompleteInput, responses=s.ActionOutput)
    def post(self, request, action_id):
        action = _action_for(request, action_id)
        data = valid(s.CompleteInput, request.data)
        if gate.is_settled_by_warden(action):
            raise Conflict("Warden completes this action from the provider's answer (runtime or gateway); an agent "
                           "cannot.", code="runtime_action")
        action = gate.complete_action(
            action=action, status=data["status"], usage=data.get("usage"), usage_source="agent",
            declared_cost_micros=data.get("cost"),
        )
        return Response(s.ActionOutput(action).data)


# --- policies -------------------------------------------------------------------------


def _policy(name) -> Policy:
    try:
        return policy_list().get(name=name)
    except Policy.DoesNotExist:
        raise Http404("No such policy.") from None


class PolicyListView(CapabilityView):
    pagination_class = Pagination  # the schema describes its lists as pages
    capabilities = {"GET": "policy.view", "POST": "policy.manage"}

    @extend_schema(responses=s.PolicyOutput(many=True))
    def get(self, request):
        paginator = Pagination()
        page = paginator.paginate_queryset(policy_list(), request, view=self)
        return paginator.get_paginated_response(s.PolicyOutput(page, many=True).data)

    @extend_schema(request=s.PolicyInput, responses={201: s.PolicyOutput})
    def post(self, request):
        data = valid(s.PolicyInput, request.data)
        policy = services.policy_create(by=request.user, **data)
        return Response(s.PolicyOutput(_policy(policy.name)).data, status=status.HTTP_201_CREATED)


class PolicyDetailView(CapabilityView):
    capabilities = {"GET": "policy.view", "PATCH": "policy.manage"}

    @extend_schema(responses=s.PolicyOutput)
    def get(self, request, name):
        return Response(s.PolicyOutput(_policy(name)).data)

    @extend_schema(request=s.PolicyUpdateInput, responses=s.PolicyOutput)
    def patch(self, request, name):
        policy = _policy(name)
        data = valid(s.PolicyUpdateInput, request.data)
        services.policy_update(policy=policy, by=request.user, **data)
        return Response(s.PolicyOutput(_policy(name)).data)


class PolicyVersionsView(CapabilityView):
    capabilities = {"GET": "policy.view"}

    @extend_schema(responses=s.PolicyVersionOutput(many=True))
    def get(self, request, name):
        versions = _policy(name).versions.select_related("created_by").order_by("-number")
        return Response(s.PolicyVersionOutput(versions, many=True).data)


class PolicyRestoreView(CapabilityView):
    capabilities = {"POST": "policy.manage"}

    @extend_schema(request=s.RestoreInput, responses=s.PolicyOutput)
    def post(self, request, name):
        data = valid(s.RestoreInput, request.data)
        services.policy_restore(policy=_policy(name), number=data["version"], by=request.user, reason=data["reason"])
        return Response(s.PolicyOutput(_policy(name)).data)


class PolicyToggleView(CapabilityView):
    capabilities = {"POST": "policy.manage"}
    enabled = True

    @extend_schema(request=s.PolicyReasonInput, responses=s.PolicyOutput)
    def post(self, request, name):
        data = valid(s.PolicyReasonInput, request.data)
        services.policy_set_enabled(policy=_policy(name), enabled=self.enabled, by=request.user, reason=data["reason"])
        return Response(s.PolicyOutput(_policy(name)).data)


class PolicyValidateView(CapabilityView):
    capabilities = {"POST": "policy.view"}

    @extend_schema(request=s.PolicyBodyInput, responses=s.ValidationOutput)
    def post(self, request):
        data = valid(s.PolicyBodyInput, request.data)
        problems = services.policy_problems(data["body"])
        return Response({"valid": not problems, "errors": problems})


class PolicySimulateView(CapabilityView):
    capabilities = {"POST": "policy.view"}

    @extend_schema(request=s.SimulateInput, responses=s.SimulationOutput)
    def post(self, request):
        data = valid(s.SimulateInput, request.data)
        return Response(simulation.simulate(changes=data["changes"], limit=data["limit"]))


class PolicySetListView(CapabilityView):
    pagination_class = Pagination  # the schema describes its lists as pages
    capabilities = {"GET": "policy.view"}

    @extend_schema(responses=s.PolicySetOutput(many=True))
    def get(self, request):
        paginator = Pagination()
        page = paginator.paginate_queryset(PolicySetVersion.objects.order_by("-number"), request, view=self)
        return paginator.get_paginated_response(s.PolicySetOutput(page, many=True).data)


# --- roles and grants --------------------------------------------------------------------


class RoleListView(CapabilityView):
    capabilities = {"GET": "agent.view", "POST": "policy.manage"}

    @extend_schema(responses=s.RoleOutput(many=True))
    def get(self, request):
        return Response(s.RoleOutput(Role.objects.all(), many=True).data)

    @extend_schema(request=s.RoleInput, responses={201: s.RoleOutput})
    def post(self, request):
        data = valid(s.RoleInput, request.data)
        return Response(s.RoleOutput(services.role_create(by=request.user, **data)).data, status=status.HTTP_201_CREATED)


class RoleDetailView(CapabilityView):
    capabilities = {"GET": "agent.view", "PATCH": "policy.manage"}

    def _role(self, name) -> Role:
        try:
            return Role.objects.get(name=name)
        except Role.DoesNotExist:
            raise Http404("No such role.") from None

    @extend_schema(responses=s.RoleOutput)
    def get(self, request, name):
        return Response(s.RoleOutput(self._role(name)).data)

    @extend_schema(request=s.RoleUpdateInput, responses=s.RoleOutput)
    def patch(self, request, name):
        data = valid(s.RoleUpdateInput, request.data)
        return Response(s.RoleOutput(services.role_update(role=self._role(name), by=request.user, **data)).data)


class AgentGrantListView(CapabilityView):
    capabilities = {"GET": "agent.view", "POST": "agent.manage"}

    @extend_schema(responses=s.GrantOutput(many=True))
    def get(self, request, agent_id):
        agent = agent_selectors.agent_get(user=request.user, agent_id=agent_id)
        grants = RoleGrant.objects.filter(agent=agent).select_related("role", "granted_by").order_by("-granted_at")
        return Response(s.GrantOutput(grants, many=True).data)

    @extend_schema(request=s.GrantInput, responses={201: s.GrantOutput})
    def post(self, request, agent_id):
        agent = agent_selectors.agent_get(user=request.user, agent_id=agent_id)
        data = valid(s.GrantInput, request.data)
        grant = services.role_grant(agent=agent, role=data["role"], expires_at=data["expires_at"], by=request.user)
        return Response(s.GrantOutput(grant).data, status=status.HTTP_201_CREATED)


class AgentGrantDetailView(CapabilityView):
    capabilities = {"DELETE": "agent.manage"}

    @extend_schema(responses={204: None})
    def delete(self, request, agent_id, grant_id):
        agent = agent_selectors.agent_get(user=request.user, agent_id=agent_id)
        try:
            grant = RoleGrant.objects.get(pk=grant_id, agent=agent)
        except RoleGrant.DoesNotExist:
            raise Http404("No such grant.") from None
        services.role_revoke(grant=grant, by=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)


# --- data views -------------------------------------------------------------------------------------


class DataViewListView(CapabilityView):
    pagination_class = Pagination  # the schema describes its lists as pages
    capabilities = {"GET": "data_view.view", "POST": "data_view.manage"}

    @extend_schema(responses=s.DataViewOutput(many=True))
    def get(self, request):
        paginator = Pagination()
        page = paginator.paginate_queryset(data_view_list(user=request.user), request, view=self)
        return paginator.get_paginated_response(s.DataViewOutput(page, many=True).data)

    @extend_schema(request=s.DataViewInput, responses={201: s.DataViewOutput})
    def post(self, request):
        view = services.data_view_create(by=request.user, **valid(s.DataViewInput, request.data))
        return Response(s.DataViewOutput(data_view_get(user=request.user, name=view.name)).data,
                        status=status.HTTP_201_CREATED)


class DataViewReadView(APIView):
    """An agent reads a data view through the gate: the rows its clearance allows, or the gate's answer."""

    permission_classes = [IsAgent]

    @extend_schema(request=s.DataReadInput, responses=s.DataReadOutput)
    def post(self, request, name):
        from governance.dataviews import data_view_read

        data = valid(s.DataReadInput, request.data)
        principal: AgentPrincipal = request.user
        with correlation_scope(data.get("correlation_id") or get_correlation_id()):
            action, rows = data_view_read(agent=principal.agent, key=principal.key, view_name=name,
                                          filters=data["filters"], columns=data.get("columns"),
                                          limit=data.get("limit"), idempotency_key=data.get("idempotency_key"),
                                          purpose=data["purpose"])
        served = rows.as_dict() if rows is not None else {"view": name, "classification": "", "columns": [],
                                                           "rows": [], "masked": [], "truncated": False, "count": 0}
        return Response(s.DataReadOutput({"action": action.pk, "outcome": action.outcome, "reasons": action.reasons,
                                          **served}).data)


class DataViewDetailView(CapabilityView):
    capabilities = {"GET": "data_view.view", "PATCH": "data_view.manage"}

    @extend_schema(responses=s.DataViewOutput)
    def get(self, request, name):
        return Response(s.DataViewOutput(data_view_get(user=request.user, name=name)).data)

    @extend_schema(request=s.DataViewUpdateInput, responses=s.DataViewOutput)
    def patch(self, request, name):
        view = data_view_get(user=request.user, name=name)
        services.data_view_update(view=view, by=request.user, **valid(s.DataViewUpdateInput, request.data))
        return Response(s.DataViewOutput(data_view_get(user=request.user, name=name)).data)


# --- approvals -------------------------------------------------------------------------------------


def _approval(request, approval_id):
    return approval_get(user=request.user, approval_id=approval_id)


class ApprovalListView(CapabilityView):
    pagination_class = Pagination  # the schema describes its lists as pages
    capabilities = {"GET": "approval.view"}

    @extend_schema(parameters=[OpenApiParameter(name, str) for name in ApprovalFilter.base_fields],
                   responses=s.ApprovalSummaryOutput(many=True))
    def get(self, request):
        query = {key: value for key, value in request.query_params.items() if key not in ("limit", "offset")}
        filters = ApprovalFilter(query)
        unknown = set(query) - set(ApprovalFilter.base_fields)
        if unknown or not filters.is_valid():
            raise DjangoValidationError({name: "Unknown filter." for name in unknown} or filters.errors)
        approvals = filters.filter(approval_list(user=request.user))
        paginator = Pagination()
        page = paginator.paginate_queryset(approvals, request, view=self)
        return paginator.get_paginated_response(s.ApprovalSummaryOutput(page, many=True).data)


class ApprovalDetailView(CapabilityView):
    capabilities = {"GET": "approval.view"}

    @extend_schema(responses=s.ApprovalDetailOutput)
    def get(self, request, approval_id):
        return Response(s.ApprovalDetailOutput(approval_context(approval=_approval(request, approval_id))).data)


class ApprovalDecideView(CapabilityView):
    capabilities = {"POST": "approval.decide"}
    verdict = "approve"

    @extend_schema(request=s.DecideInput, responses=s.ApprovalDetailOutput)
    def post(self, request, approval_id):
        approval = _approval(request, approval_id)
        data = valid(s.DecideInput, request.data or {})
        approvals.approval_decide(approval=approval, by=request.user, verdict=self.verdict, comment=data["comment"])
        return Response(s.ApprovalDetailOutput(approval_context(approval=_approval(request, approval_id))).data)


class BudgetIncreaseRequestView(APIView):
    """An agent the budget covers (its key), or a person who owns one, asks finance for a higher limit."""

    permission_classes = [IsAuthenticated]

    @extend_schema(request=s.IncreaseRequestInput, responses={201: s.IncreaseRequestOutput})
    def post(self, request, budget_id):
        from billing.models import Budget

        budget = Budget.objects.filter(pk=budget_id).first()
        if budget is None:
            raise Http404("No such budget.")
        data = valid(s.IncreaseRequestInput, request.data)
        principal = request.user
        asker = {"by_agent": principal.agent} if isinstance(principal, AgentPrincipal) else {"by_user": principal}
        try:
            approval = approvals.budget_increase_request(
                budget=budget, requested_limit_micros=data["monthly_limit_micros"], reason=data["reason"], **asker)
        except Budget.DoesNotExist:
            raise Http404("No such budget.") from None
        # What was asked and where it stands: nothing of the budget's figures or the deciders' view.
        return Response(s.IncreaseRequestOutput(approval).data, status=status.HTTP_201_CREATED)
