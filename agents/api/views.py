"""Registry API: thin views; explicit serializers in, services do the work."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response
from rest_framework.views import APIView

from governance.api.base import CapabilityView, valid
from governance.api.pagination import Pagination
from governance.api.permissions import IsAgent

from .. import selectors, services
from ..filters import AgentFilter
from . import serializers as s


class AgentListView(CapabilityView):
    pagination_class = Pagination  # the schema describes its lists as pages
    capabilities = {"GET": "agent.view", "POST": "agent.manage"}

    @extend_schema(
        parameters=[OpenApiParameter(name, str, required=False) for name in ("q", "status", "team", "owner", "role")],
        responses=s.AgentOutput(many=True),
    )
    def get(self, request):
        filters = AgentFilter(request.query_params)
        if not filters.is_valid():
            raise ValidationError(filters.errors)
        queryset = filters.filter(selectors.agent_list(user=request.user)).order_by("name")
        paginator = Pagination()
        page = paginator.paginate_queryset(queryset, request, view=self)
        return paginator.get_paginated_response(s.AgentOutput(page, many=True).data)

    @extend_schema(request=s.AgentCreateInput, responses={201: s.AgentOutput})
    def post(self, request):
        data = valid(s.AgentCreateInput, request.data)
        agent = services.agent_register(by=request.user, **data)
        agent = selectors.agent_get(user=request.user, agent_id=agent.pk)
        return Response(s.AgentOutput(agent).data, status=status.HTTP_201_CREATED)


class AgentDetailView(CapabilityView):
    capabilities = {"GET": "agent.view", "PATCH": "agent.manage"}

    @extend_schema(responses=s.AgentOutput)
    def get(self, request, agent_id):
        return Response(s.AgentOutput(selectors.agent_get(user=request.user, agent_id=agent_id)).data)

    @extend_schema(request=s.AgentUpdateInput, responses=s.AgentOutput)
    def patch(self, request, agent_id):
        agent = selectors.agent_get(user=request.user, agent_id=agent_id)
        unknown = set(request.data) - set(s.AgentUpdateInput().fields) if isinstance(request.data, dict) else set()
        if unknown:
            hint = " Use the suspend/resume/retire endpoints to change status." if "status" in unknown else ""
            raise ValidationError({name: f"This field cannot be changed here.{hint}" for name in sorted(unknown)})
        data = valid(s.AgentUpdateInput, request.data)
        services.agent_update(agent=agent, by=request.user, **data)
        return Response(s.AgentOutput(selectors.agent_get(user=request.user, agent_id=agent_id)).data)


class _LifecycleView(CapabilityView):
    action_service = None
    needs_reason = True

    @extend_schema(request=s.ReasonInput, responses=s.AgentOutput)
    def post(self, request, agent_id):
        agent = selectors.agent_get(user=request.user, agent_id=agent_id)
        data = valid(s.ReasonInput, request.data or {})
        kwargs = {"reason": data["reason"]} if self.needs_reason else {}
        type(self).action_service(agent=agent, by=request.user, **kwargs)
        return Response(s.AgentOutput(selectors.agent_get(user=request.user, agent_id=agent_id)).data)


class AgentSuspendView(_LifecycleView):
    """The kill switch: takes effect on the agent's next gate call."""

    capabilities = {"POST": "agent.suspend"}
    action_service = services.agent_suspend


class AgentResumeView(_LifecycleView):
    capabilities = {"POST": "agent.manage"}
    action_service = services.agent_resume


class AgentRetireView(_LifecycleView):
    capabilities = {"POST": "agent.manage"}
    action_service = services.agent_retire


class AgentActivateView(_LifecycleView):
    capabilities = {"POST": "agent.manage"}
    action_service = services.agent_activate
    needs_reason = False


class AgentKeyListView(CapabilityView):
    capabilities = {"GET": "agent.view", "POST": "agent.manage"}

    @extend_schema(responses=s.KeyOutput(many=True))
    def get(self, request, agent_id):
        agent = selectors.agent_get(user=request.user, agent_id=agent_id)
        return Response(s.KeyOutput(selectors.agent_keys(agent=agent), many=True).data)

    @extend_schema(request=s.KeyIssueInput, responses={201: s.KeyIssuedOutput})
    def post(self, request, agent_id):
        agent = selectors.agent_get(user=request.user, agent_id=agent_id)
        data = valid(s.KeyIssueInput, request.data or {})
        key, secret = services.agent_key_issue(agent=agent, by=request.user, **data)
        key.secret = secret
        return Response(s.KeyIssuedOutput(key).data, status=status.HTTP_201_CREATED)


class AgentKeyDetailView(CapabilityView):
    capabilities = {"GET": "agent.view", "DELETE": "agent.manage"}

    @extend_schema(responses=s.KeyOutput)
    def get(self, request, agent_id, key_id):
        agent = selectors.agent_get(user=request.user, agent_id=agent_id)
        return Response(s.KeyOutput(selectors.agent_key_get(agent=agent, key_id=key_id)).data)

    @extend_schema(responses={204: None})
    def delete(self, request, agent_id, key_id):
        agent = selectors.agent_get(user=request.user, agent_id=agent_id)
        key = selectors.agent_key_get(agent=agent, key_id=key_id)
        services.agent_key_revoke(key=key, by=request.user, reason=request.query_params.get("reason", "")[:200])
        return Response(status=status.HTTP_204_NO_CONTENT)


class AgentKeyRotateView(CapabilityView):
    capabilities = {"POST": "agent.manage"}

    @extend_schema(request=s.KeyRotateInput, responses={201: s.KeyIssuedOutput})
    def post(self, request, agent_id, key_id):
        agent = selectors.agent_get(user=request.user, agent_id=agent_id)
        key = selectors.agent_key_get(agent=agent, key_id=key_id)
        data = valid(s.KeyRotateInput, request.data or {})
        new_key, secret = services.agent_key_rotate(key=key, by=request.user, **data)
        new_key.secret = secret
        return Response(s.KeyIssuedOutput(new_key).data, status=status.HTTP_201_CREATED)


class AgentDelegationListView(CapabilityView):
    """Delegations an agent received; admins lend scopes to it from here."""

    capabilities = {"GET": "agent.view", "POST": "agent.manage"}

    @extend_schema(responses=s.DelegationOutput(many=True))
    def get(self, request, agent_id):
        agent = selectors.agent_get(user=request.user, agent_id=agent_id)
        delegations = selectors.agent_delegations(agent=agent)
        return Response(s.DelegationOutput(delegations["received"], many=True).data)

    @extend_schema(request=s.DelegationInput, responses={201: s.DelegationOutput})
    def post(self, request, agent_id):
        agent = selectors.agent_get(user=request.user, agent_id=agent_id)
        data = valid(s.DelegationInput, request.data)
        delegation = services.delegation_create(delegate=agent, by_user=request.user, **data)
        return Response(s.DelegationOutput(delegation).data, status=status.HTTP_201_CREATED)


class DelegationRevokeView(CapabilityView):
    capabilities = {"POST": "agent.manage"}

    @extend_schema(request=s.ReasonInput, responses=s.DelegationOutput)
    def post(self, request, delegation_id):
        delegation = selectors.delegation_get(user=request.user, delegation_id=delegation_id)
        data = valid(s.ReasonInput, request.data or {})
        delegation = services.delegation_revoke(delegation=delegation, by=request.user, reason=data["reason"])
        return Response(s.DelegationOutput(delegation).data)


class AgentDelegateView(APIView):
    """An agent lends some of its scopes to another agent, judged by the gate (agent.delegate)."""

    permission_classes = [IsAgent]

    @extend_schema(request=s.AgentDelegationInput, responses={201: s.DelegationOutput})
    def post(self, request):
        from governance.api.serializers import ActionOutput

        data = valid(s.AgentDelegationInput, request.data)
        action, delegation = services.delegation_by_agent(
            agent=request.user.agent, key=request.user.key, delegate_name=data["delegate"], scopes=data["scopes"],
            expires_at=data["expires_at"], parent_id=data.get("on_behalf_of"), max_depth=data.get("max_depth"),
            purpose=data["purpose"], idempotency_key=data.get("idempotency_key"),
        )
        body = {"action": ActionOutput(action).data,
                "delegation": s.DelegationOutput(delegation).data if delegation is not None else None}
        return Response(body, status=status.HTTP_201_CREATED)


class AgentSelfView(APIView):
    """Who this agent key belongs to: lets an agent check its wiring."""

    permission_classes = [IsAgent]

    @extend_schema(responses=s.AgentSelfOutput)
    def get(self, request):
        return Response(s.AgentSelfOutput(request.user).data)


# --- runs: agents whose program Warden's workers execute ---------------------------------------


def _run_detail(run) -> dict:
    from ..runtime.selectors import run_steps

    run.step_list = run_steps(run=run)
    body = s.RunOutput(run).data
    body.update(plan=run.plan, result=run.result,
                steps=s.RunStepOutput(run.step_list, many=True).data)
    return body


class AgentRunListView(CapabilityView):
    pagination_class = Pagination  # the schema describes its lists as pages
    capabilities = {"GET": "run.view", "POST": "run.manage"}

    @extend_schema(responses=s.RunOutput(many=True))
    def get(self, request, agent_id):
        from ..runtime.selectors import run_list

        agent = selectors.agent_get(user=request.user, agent_id=agent_id)
        paginator = Pagination()
        page = paginator.paginate_queryset(run_list(user=request.user).filter(agent=agent).order_by("-created_at"),
                                           request, view=self)
        return paginator.get_paginated_response(s.RunOutput(page, many=True).data)

    @extend_schema(request=s.RunStartInput, responses={201: s.RunDetailOutput})
    def post(self, request, agent_id):
        from ..models import RunSource
        from ..runtime.selectors import run_get
        from ..runtime.services import run_start

        agent = selectors.agent_get(user=request.user, agent_id=agent_id)
        data = valid(s.RunStartInput, request.data)
        run = run_start(agent=agent, objective=data["objective"], by=request.user, source=RunSource.API)
        return Response(_run_detail(run_get(user=request.user, run_id=run.pk)), status=status.HTTP_201_CREATED)


class RunListView(CapabilityView):
    pagination_class = Pagination  # the schema describes its lists as pages
    capabilities = {"GET": "run.view"}

    @extend_schema(parameters=[OpenApiParameter(name, str, required=False) for name in ("agent", "status", "source", "team")],
                   responses=s.RunOutput(many=True))
    def get(self, request):
        from ..filters import RunFilter
        from ..runtime.selectors import run_list

        filters = RunFilter(request.query_params)
        if not filters.is_valid():
            raise ValidationError(filters.errors)
        paginator = Pagination()
        page = paginator.paginate_queryset(filters.filter(run_list(user=request.user)).order_by("-created_at"),
                                           request, view=self)
        return paginator.get_paginated_response(s.RunOutput(page, many=True).data)


class RunDetailView(CapabilityView):
    capabilities = {"GET": "run.view"}

    @extend_schema(responses=s.RunDetailOutput)
    def get(self, request, run_id):
        from ..runtime.selectors import run_get

        return Response(_run_detail(run_get(user=request.user, run_id=run_id)))


class RunCancelView(CapabilityView):
    """Stop a run at its next step; what its step in flight holds is released."""

    capabilities = {"POST": "run.cancel"}

    @extend_schema(request=s.RunCancelInput, responses=s.RunDetailOutput)
    def post(self, request, run_id):
        from ..runtime.selectors import run_get
        from ..runtime.services import run_cancel

        run = run_get(user=request.user, run_id=run_id)
        data = valid(s.RunCancelInput, request.data or {})
        run_cancel(run=run, by=request.user, reason=data["reason"])
        return Response(_run_detail(run_get(user=request.user, run_id=run_id)))


# --- MCP servers behind the gateway ------------------------------------------------------------------


class McpServerListView(CapabilityView):
    pagination_class = Pagination  # the schema describes its lists as pages
    capabilities = {"GET": "mcp.view", "POST": "mcp.manage"}

    @extend_schema(responses=s.McpServerOutput(many=True))
    def get(self, request):
        from ..gateway.registry import mcp_server_list

        paginator = Pagination()
        page = paginator.paginate_queryset(mcp_server_list(), request, view=self)
        return paginator.get_paginated_response(s.McpServerOutput(page, many=True).data)

    @extend_schema(request=s.McpServerInput, responses={201: s.McpServerOutput})
    def post(self, request):
        from ..gateway.registry import mcp_server_register

        server = mcp_server_register(by=request.user, **valid(s.McpServerInput, request.data))
        return Response(s.McpServerOutput(server).data, status=status.HTTP_201_CREATED)


class McpServerDetailView(CapabilityView):
    capabilities = {"GET": "mcp.view", "PATCH": "mcp.manage"}

    @extend_schema(responses=s.McpServerOutput)
    def get(self, request, name):
        from ..gateway.registry import mcp_server_get

        return Response(s.McpServerOutput(mcp_server_get(name=name)).data)

    @extend_schema(request=s.McpServerUpdateInput, responses=s.McpServerOutput)
    def patch(self, request, name):
        from django.db import transaction

        from ..gateway.registry import mcp_server_get, mcp_server_update, mcp_tool_set

        data = valid(s.McpServerUpdateInput, request.data)
        tools = data.pop("tools", [])
        with transaction.atomic():  # all of it or none of it
            server = mcp_server_update(server=mcp_server_get(name=name), by=request.user, **data)
            for tool in tools:
                mcp_tool_set(server=server, by=request.user, **tool)
        return Response(s.McpServerOutput(mcp_server_get(name=name)).data)
