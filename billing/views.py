"""Finance pages: budgets, spend, prices. Thin: selectors read, services write."""

from __future__ import annotations

import calendar
import datetime as dt

from django.contrib import messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.vary import vary_on_headers

from governance.access import can, require
from governance.forms import apply_errors

from . import selectors, services
from .forms import BudgetEditForm, BudgetForm, PriceForm
from .models import Budget


def _month(request) -> dt.date:
    try:
        return selectors.parse_month(request.GET.get("month"))
    except ValueError:
        return services.period_start()


def _neighbours(month: dt.date) -> tuple[str, str]:
    previous = (month - dt.timedelta(days=1)).replace(day=1)
    following = (month + dt.timedelta(days=32)).replace(day=1)
    return previous.strftime("%Y-%m"), following.strftime("%Y-%m")


@require("budget.view")
@vary_on_headers("HX-Request")  # the same URL answers the page or its live part
def budget_list(request):
    month = _month(request)
    form = BudgetForm(request.POST or None)
    if request.method == "POST":
        if not can(request.user, "budget.manage"):
            raise PermissionDenied("budget.manage")
        if form.is_valid():
            data = form.cleaned_data
            try:
                budget = services.budget_create(
                    scope=data["scope"], team=data["team"], agent=data["agent"], by=request.user,
                    monthly_limit_micros=data["monthly_limit"], thresholds=data["thresholds"], on_exceed=data["on_exceed"],
                )
            except ValidationError as error:
                apply_errors(form, error)
            else:
                messages.success(request, f"Budget for {budget.label} set.")
                return redirect("billing:budgets")
    previous, following = _neighbours(month)
    # The page's live part asks again every few seconds (htmx): the budgets table, nothing else computed.
    live = bool(request.htmx) and request.method == "GET"
    template = "billing/budget_list.html#live" if live else "billing/budget_list.html"
    summary = None if live else selectors.summary(user=request.user, month=month)
    return render(request, template, {"now": timezone.now(),
        "month": month, "previous": previous, "following": following, "summary": summary,
        "lines": selectors.budget_lines(user=request.user, month=month),
        "notifications": [] if live else selectors.notifications(user=request.user),
        "form": form, "can_manage": can(request.user, "budget.manage"),
    }, status=400 if form.errors else 200)


@require("budget.manage")
def budget_edit(request, budget_id):
    budget = get_object_or_404(Budget.objects.select_related("team", "agent"), pk=budget_id)
    initial = {"monthly_limit": budget.monthly_limit_micros / 1_000_000, "on_exceed": budget.on_exceed,
               "thresholds": ", ".join(str(t) for t in budget.thresholds), "active": budget.active,
               "approvals_required": budget.approvals_required, "approval_ttl_hours": budget.approval_ttl_hours}
    form = BudgetEditForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            services.budget_update(budget=budget, by=request.user, monthly_limit_micros=data["monthly_limit"],
                                   thresholds=data["thresholds"], on_exceed=data["on_exceed"], active=data["active"],
                                   approvals_required=data["approvals_required"],
                                   approval_ttl_hours=data["approval_ttl_hours"])
        except ValidationError as error:
            apply_errors(form, error)
        else:
            messages.success(request, f"Budget for {budget.label} saved.")
            return redirect("billing:budgets")
    return render(request, "billing/budget_form.html", {"form": form, "budget": budget}, status=400 if form.errors else 200)


@require("budget.view")
def spend(request):
    month = _month(request)
    previous, following = _neighbours(month)
    summary = selectors.summary(user=request.user, month=month)
    by_model = selectors.spend(user=request.user, month=month, group_by="model")
    top = selectors.spend(user=request.user, month=month, group_by="agent")[:10]
    teams = selectors.spend(user=request.user, month=month, group_by="team")
    by_day = {row["key"]: row for row in summary["daily"]}
    days = calendar.monthrange(month.year, month.month)[1]
    series = [by_day.get(f"{month:%Y-%m}-{d:02d}", {"key": f"{month:%Y-%m}-{d:02d}", "cost_micros": 0, "actions": 0})
              for d in range(1, days + 1)]
    peak = max([row["cost_micros"] for row in series] or [1]) or 1
    model_peak = max([row["cost_micros"] for row in by_model] or [1]) or 1
    return render(request, "billing/spend.html", {
        "month": month, "previous": previous, "following": following, "summary": summary,
        "daily": [{**row, "height": row["cost_micros"] * 100 / peak} for row in series],
        "has_spend": bool(summary["daily"]),
        "by_model": [{**row, "width": row["cost_micros"] * 100 / model_peak} for row in by_model],
        "top": top, "teams": teams,
    })


@require("budget.view")
def price_list(request):
    form = PriceForm(request.POST or None)
    if request.method == "POST":
        if not can(request.user, "budget.manage"):
            raise PermissionDenied("budget.manage")
        if form.is_valid():
            data = form.cleaned_data
            try:
                price = services.price_set(
                    kind=data["kind"], name=data["name"], by=request.user, note=data["note"],
                    input_per_million_micros=data["input_per_million"] or 0,
                    output_per_million_micros=data["output_per_million"] or 0,
                    per_call_micros=data["per_call"] or 0, effective_from=data["effective_from"],
                )
            except ValidationError as error:
                apply_errors(form, error)
            else:
                messages.success(request, f"Price for {price.kind} {price.name} set.")
                return redirect("billing:prices")
    return render(request, "billing/price_list.html", {
        "prices": selectors.current_prices(), "form": form, "can_manage": can(request.user, "budget.manage"),
    }, status=400 if form.errors else 200)
