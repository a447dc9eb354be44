from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import JsonResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from .access import can, require, user_groups
from .context_processors import SECTIONS
from .health import readiness


@require_GET
@never_cache
def healthz(request):
    """The process is up and serving requests; says nothing about its dependencies."""
    return JsonResponse({"status": "ok"})


@require_GET
@never_cache
def readyz(request):
    """Ready only when PostgreSQL and Redis both answer; 503 otherwise (fail closed)."""
    checks = readiness()
    ready = all(value == "ok" for value in checks.values())
    return JsonResponse({"status": "ready" if ready else "unavailable", "checks": checks}, status=200 if ready else 503)


@login_required
def home(request):
    sections = [(label, url) for label, url, capability in SECTIONS if can(request.user, capability)]
    return render(request, "governance/home.html", {"sections": sections, "groups": sorted(user_groups(request.user))})


@require("policy.view")
def policy_list(request):
    return render(request, "governance/policy_list.html")


@require("approval.view")
def approval_list(request):
    return render(request, "governance/approval_list.html")
