"""Finance API: budgets, prices, spend (JSON and CSV), notifications."""

from __future__ import annotations

from django.http import Http404, StreamingHttpResponse
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response

from governance.api.base import CapabilityView, csv_lines, valid

from .. import selectors, services
from ..models import Budget
from . import serializers as s


def month_of(request):
    try:
        return selectors.parse_month(request.query_params.get("month"))
    except ValueError:
        raise ValidationError({"month": "Give the month as YYYY-MM."}) from None


class BudgetListView(CapabilityView):
    capabilities = {"GET": "budget.view", "POST": "budget.manage"}

    @extend_schema(parameters=[OpenApiParameter("month", str, description="YYYY-MM; default this month")],
                   responses=s.BudgetOutput(many=True))
    def get(self, request):
        return Response(s.BudgetOutput(selectors.budget_lines(user=request.user, month=month_of(request)), many=True).data)

    @extend_schema(request=s.BudgetInput, responses={201: s.BudgetOutput})
    def post(self, request):
        data = valid(s.BudgetInput, request.data)
        budget = services.budget_create(by=request.user, **data)
        line = next(line for line in selectors.budget_lines(user=request.user, month=services.period_start()) if line.budget.pk == budget.pk)
        return Response(s.BudgetOutput(line).data, status=status.HTTP_201_CREATED)


class BudgetDetailView(CapabilityView):
    capabilities = {"PATCH": "budget.manage"}

    @extend_schema(request=s.BudgetUpdateInput, responses=s.BudgetOutput)
    def patch(self, request, budget_id):
        try:
            budget = Budget.objects.get(pk=budget_id)
        except Budget.DoesNotExist:
            raise Http404("No such budget.") from None
        services.budget_update(budget=budget, by=request.user, **valid(s.BudgetUpdateInput, request.data))
        line = next(line for line in selectors.budget_lines(user=request.user, month=services.period_start()) if line.budget.pk == budget.pk)
        return Response(s.BudgetOutput(line).data)


class PriceListView(CapabilityView):
    capabilities = {"GET": "budget.view", "POST": "budget.manage"}

    @extend_schema(responses=s.PriceOutput(many=True))
    def get(self, request):
        return Response(s.PriceOutput(selectors.current_prices(), many=True).data)

    @extend_schema(request=s.PriceInput, responses={201: s.PriceOutput})
    def post(self, request):
        price = services.price_set(by=request.user, **valid(s.PriceInput, request.data))
        return Response(s.PriceOutput(price).data, status=status.HTTP_201_CREATED)


class SpendView(CapabilityView):
    capabilities = {"GET": "budget.view"}

    @extend_schema(parameters=[OpenApiParameter("month", str), OpenApiParameter("group_by", str, enum=list(selectors.GROUPS))],
                   responses=s.SpendOutput)
    def get(self, request):
        month = month_of(request)
        group_by = request.query_params.get("group_by", "agent")
        if group_by not in selectors.GROUPS:
            raise ValidationError({"group_by": f"One of {', '.join(selectors.GROUPS)}."})
        overview = selectors.summary(user=request.user, month=month)
        body = {"month": overview["month"], "group_by": group_by, "total_micros": overview["total_micros"],
                "forecast_micros": overview["forecast_micros"],
                "groups": selectors.spend(user=request.user, month=month, group_by=group_by)}
        return Response(s.SpendOutput(body).data)


CSV_COLUMNS = ["occurred_at", "agent_name", "team", "kind", "resource", "input_tokens", "output_tokens",
               "cost_micros", "reserved_micros", "overage_micros", "status", "action_id"]


class SpendExportView(CapabilityView):
    """The month's ledger as CSV, streamed."""

    capabilities = {"GET": "budget.view"}

    @extend_schema(parameters=[OpenApiParameter("month", str)], responses={(200, "text/csv"): str})
    def get(self, request):
        month = month_of(request)
        rows = selectors.ledger(user=request.user, month=month).order_by("occurred_at").values_list(
            *[c for c in CSV_COLUMNS if c != "action_id"], "action_id").iterator()
        response = StreamingHttpResponse(csv_lines(CSV_COLUMNS, ([*r[:-1], str(r[-1])] for r in rows)), content_type="text/csv")
        response["Content-Disposition"] = f'attachment; filename="warden-spend-{month:%Y-%m}.csv"'
        return response


class NotificationListView(CapabilityView):
    capabilities = {"GET": "budget.view"}

    @extend_schema(responses=s.NotificationOutput(many=True))
    def get(self, request):
        return Response(s.NotificationOutput(selectors.notifications(user=request.user, limit=100), many=True).data)
