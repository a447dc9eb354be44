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


@login_required
def api_tokens(request):
    """A person's own API tokens: issue (shown once) and revoke."""
    import datetime as dt

    from django.contrib import messages
    from django.core.exceptions import ValidationError
    from django.shortcuts import get_object_or_404, redirect
    from django.utils import timezone

    from .forms import ApiTokenForm, apply_errors
    from .models import ApiToken
    from .services import api_token_issue, api_token_revoke

    form = ApiTokenForm(request.POST or None)
    new_secret = None
    if request.method == "POST" and "revoke" in request.POST:
        token = get_object_or_404(ApiToken, pk=request.POST["revoke"], user=request.user)
        api_token_revoke(token=token, by=request.user)
        messages.success(request, f"Token {token.name} revoked.")
        return redirect("api-tokens")
    if request.method == "POST" and form.is_valid():
        days = form.cleaned_data["expires_in_days"]
        try:
            _, new_secret = api_token_issue(
                user=request.user, name=form.cleaned_data["name"],
                expires_at=timezone.now() + dt.timedelta(days=days) if days else None,
            )
        except ValidationError as error:
            apply_errors(form, error)
        else:
            form = ApiTokenForm()
    response = render(request, "governance/api_tokens.html", {
        "form": form, "tokens": ApiToken.objects.filter(user=request.user), "new_secret": new_secret,
    }, status=400 if form.errors else 200)
    if new_secret:
        response["Cache-Control"] = "no-store"
    return response
