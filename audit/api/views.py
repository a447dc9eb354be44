"""Security's API: filtered, cursor-paginated events and chain verification."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.exceptions import ValidationError
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from governance.api.permissions import HasCapability

from .. import selectors
from ..filters import AuditFilter
from ..verify import verify


class EventOutput(serializers.Serializer):
    id = serializers.IntegerField()
    occurred_at = serializers.DateTimeField()
    chain = serializers.CharField()
    seq = serializers.IntegerField()
    actor_type = serializers.CharField()
    actor_name = serializers.CharField()
    agent_id = serializers.UUIDField(allow_null=True)
    agent_name = serializers.CharField()
    team = serializers.CharField()
    action = serializers.CharField()
    resource = serializers.CharField()
    outcome = serializers.CharField()
    reasons = serializers.ListField(child=serializers.CharField())
    policy_ids = serializers.ListField(child=serializers.CharField())
    policy_version = serializers.IntegerField(allow_null=True)
    cost_micros = serializers.IntegerField(allow_null=True)
    data_classification = serializers.CharField()
    delegation_chain = serializers.ListField(child=serializers.DictField())
    correlation_id = serializers.CharField()
    trace_id = serializers.CharField()
    payload = serializers.DictField()
    hash = serializers.CharField()


class EventPage(serializers.Serializer):
    results = EventOutput(many=True)
    next_cursor = serializers.CharField(allow_null=True)


class VerifyOutput(serializers.Serializer):
    ok = serializers.BooleanField()
    events_checked = serializers.IntegerField()
    chains = serializers.IntegerField()
    first_break = serializers.DictField(allow_null=True)
    checkpoint = serializers.DictField(allow_null=True)


def filtered(request) -> AuditFilter:
    unknown = set(request.query_params) - set(AuditFilter.base_fields)
    if unknown:
        raise ValidationError({name: "Unknown filter." for name in sorted(unknown)})
    filters = AuditFilter(request.query_params)
    if not filters.is_valid():
        raise ValidationError(filters.errors)
    return filters


class EventListView(APIView):
    permission_classes = [IsAuthenticated, HasCapability]
    capabilities = {"GET": "audit.view"}

    @extend_schema(parameters=[OpenApiParameter(name, str) for name in AuditFilter.base_fields], responses=EventPage)
    def get(self, request):
        filters = filtered(request)
        events, next_cursor = filters.page(selectors.events(user=request.user))
        return Response(EventPage({"results": events, "next_cursor": next_cursor}).data)


class VerifyView(APIView):
    permission_classes = [IsAuthenticated, HasCapability]
    capabilities = {"GET": "audit.view"}

    @extend_schema(responses={200: VerifyOutput, 409: VerifyOutput})
    def get(self, request):
        result = verify()
        return Response(VerifyOutput(result).data, status=200 if result.ok else 409)
