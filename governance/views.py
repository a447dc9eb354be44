from __future__ import annotations

import datetime as dt
import difflib

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.views import LoginView
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.template.loader import render_to_string
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_POST
from django.views.decorators.vary import vary_on_headers

from agents import selectors as agent_selectors
from audit.services import audit_record

from . import approvals, selectors, services, simulation
from .access import can, require, user_groups
from .context_processors import SECTIONS
from .approvals import may_decide
from .exceptions import Conflict, NotAllowed
from .filters import ApprovalFilter
from .forms import (ApiTokenForm, DataViewEditForm, DataViewForm, GrantForm, PolicyEditForm, PolicyForm, RoleForm,
                    SimulateForm, apply_errors)
from .health import readiness
from .middleware import client_address
from .models import ApiToken, Policy, PolicySetVersion, Role, RoleGrant
from .policy_templates import TEMPLATES
from .selectors import policy_list as policies


class SignInView(LoginView):
    """Django's sign-in, recording every sign-in and every failed attempt in the audit log."""

    redirect_authenticated_user = True

    def form_valid(self, form):
        response = super().form_valid(form)
        audit_record(action="auth.sign_in", actor=form.get_user(), resource=f"user:{form.get_user().get_username()}",
                     payload={"ip": client_address(self.request)})
        return response

    def form_invalid(self, form):
        # What was typed as the username is kept (as text); what was typed as the password never is.
        attempted = (form.data.get("username") or "")[:150]
        locked = bool(getattr(self.request, "axes_locked_out", False))
        reason = (f"too many failed sign-ins: locked for {settings.WARDEN_SIGNIN_LOCKOUT_MINUTES} minutes" if locked
                  else "wrong username or password")
        audit_record(action="auth.sign_in_failed", actor=None, outcome="locked" if locked else "denied",
                     resource=f"user:{attempted}", reasons=[reason],
                     payload={"ip": client_address(self.request)})
        return super().form_invalid(form)


def sign_in_locked_out(request, original_response=None, credentials=None):
    """django-axes' lockout answer: the sign-in page again, saying why, with 429."""
    from django.contrib.auth.forms import AuthenticationForm

    return render(request, "registration/login.html", {
        "form": AuthenticationForm(request), "locked_out": True,
        "username": (request.POST.get("username") or "")[:150],
        "cooloff_minutes": settings.WARDEN_SIGNIN_LOCKOUT_MINUTES,
    }, status=429)


@require_GET
@never_cache
def healthz(request):
    """The process is up and serving requests; says nothing about its dependencies."""
    return JsonResponse({"status": "ok"})


@require_GET
@never_cache
def metrics(request):
    """Prometheus metrics (governance/metrics.py), for a scraper holding WARDEN_METRICS_TOKEN as a Bearer token;
    not served at all while no token is set."""
    import hmac

    from django.http import Http404, HttpResponse
    from prometheus_client import CONTENT_TYPE_LATEST

    from .metrics import exposition

    token = settings.WARDEN_METRICS_TOKEN
    if not token:
        raise Http404("metrics are not enabled (WARDEN_METRICS_TOKEN)")
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        response = HttpResponse("a Bearer token (WARDEN_METRICS_TOKEN) is required\n", status=401,
                                content_type="text/plain")
        response["WWW-Authenticate"] = 'Bearer realm="warden-metrics"'
        return response
    return HttpResponse(exposition(), content_type=CONTENT_TYPE_LATEST)


@require_GET
@never_cache
def readyz(request):
    """Ready only when PostgreSQL and Redis both answer; 503 otherwise (fail closed)."""
    checks = readiness()
    ready = all(value == "ok" for value in checks.values())
    return JsonResponse({"status": "ready" if ready else "unavailable", "checks": checks}, status=200 if ready else 503)


@login_required
def home(request):
    """The fleet overview: it refreshes itself (htmx, every few seconds) with what this person may see."""
    sections = [(label, url) for label, url, capability in SECTIONS if can(request.user, capability)]
    overview = selectors.fleet_overview(user=request.user, now=timezone.now()) if sections else {}
    context = {"sections": sections, "groups": sorted(user_groups(request.user)), "o": overview,
               "can_audit": can(request.user, "audit.view"),
               "chart": _decision_bars(overview.get("decisions")) if sections else []}
    template = "governance/home.html#fleet" if request.htmx else "governance/home.html"
    return render(request, template, context)


@require("alert.view")
def alert_list(request):
    """Every anomaly alert, newest first (governance/anomalies.py)."""
    from .models import Alert

    alerts = Alert.objects.select_related("agent").order_by("-created_at")
    agent = request.GET.get("agent", "")
    if agent:
        alerts = alerts.filter(agent__name=agent[:64])
    return render(request, "governance/alert_list.html", {"alerts": alerts[:200], "agent": agent[:64],
                                                          "can_audit": can(request.user, "audit.view")})


def _decision_bars(decisions: dict | None) -> list[dict]:
    """Stacked bars (allowed, pending, denied) per minute, scaled to a 100-unit-high chart."""
    if not decisions:
        return []
    minutes = len(decisions["allowed"])
    totals = [sum(decisions[outcome][i] for outcome in decisions) for i in range(minutes)]
    top = max(totals) or 1
    bars = []
    for i in range(minutes):
        y, parts = 100, []
        for outcome in ("allowed", "pending_approval", "denied"):
            height = round(decisions[outcome][i] * 100 / top, 1)
            y -= height
            parts.append({"outcome": outcome, "y": round(y, 1), "height": height, "count": decisions[outcome][i]})
        bars.append({"x": i * 10 + 1, "parts": parts, "total": totals[i], "ago": minutes - i})
    return bars


def approval_rows(user, approvals) -> list[dict]:
    """Each request with what this person may do about it (one rule for the page and its live pushes)."""
    return [{"approval": approval, "refusal": may_decide(user=user, approval=approval)} for approval in approvals]


@require("approval.view")
@vary_on_headers("HX-Request")
def approval_list(request):
    """The queue: what waits, oldest first (or the history), filtered; it updates itself (/ws/approvals/)."""
    query = request.GET.copy()
    query.setdefault("status", "pending")
    filters = ApprovalFilter(query)
    rows, status = [], 200
    if filters.is_valid():
        rows = approval_rows(request.user, filters.filter(selectors.approval_list(user=request.user))[:200])
    else:
        status = 400
    template = "governance/approval_list.html#rows" if request.htmx else "governance/approval_list.html"
    return render(request, template, {"filters": filters, "rows": rows, "query": query.urlencode()}, status=status)


@require("approval.view")
def approval_detail(request, approval_id):
    approval = selectors.approval_get(user=request.user, approval_id=approval_id)
    if request.htmx and request.GET.get("part") == "decision":
        return _decision_panel(request, approval)  # the page refreshing itself after a live event
    return render(request, "governance/approval_detail.html", {
        "context": selectors.approval_context(approval=approval),
        "refusal": may_decide(user=request.user, approval=approval),
        "can_view_policies": can(request.user, "policy.view"),
    })


@require("approval.decide")
@require_POST
def approval_decide(request, approval_id, verdict):
    """Approve or deny from the queue (the row comes back) or the detail page (its decision panel does)."""
    approval = selectors.approval_get(user=request.user, approval_id=approval_id)
    error, status = None, 200
    try:
        approval = approvals.approval_decide(approval=approval, by=request.user, verdict=verdict,
                                             comment=request.POST.get("comment", ""))
    except ValidationError as problem:
        error, status = " ".join(problem.messages), 400
    except NotAllowed as problem:
        error, status = problem.message, 403
    except Conflict as problem:
        error, status = problem.message, 409
    approval = selectors.approval_get(user=request.user, approval_id=approval_id)
    if not request.htmx:
        if error:
            messages.error(request, error)
        else:
            messages.success(request, f"Request {approval.status}.")
        return redirect("governance:approval", approval_id=approval.pk)
    # htmx swaps only 2xx answers: a refusal comes back as 200 with the message in place (the status is in
    # X-Warden-Status for scripts); without htmx the redirect above carries it as a message.
    if request.POST.get("from") == "queue":
        row = approval_rows(request.user, [approval])[0]
        response = render(request, "governance/approval_list.html#row", {"row": row, "error": error})
    else:
        response = _decision_panel(request, approval, error=error)
    response["HX-Trigger"] = "approvals-changed"  # the navigation's count
    response["X-Warden-Status"] = str(status)
    return response


def _decision_panel(request, approval, *, error=None):
    """The detail page's decision panel, with its status badge and timing line swapped out of band."""
    context = {"context": selectors.approval_context(approval=approval), "error": error,
               "refusal": may_decide(user=request.user, approval=approval)}
    response = render(request, "governance/approval_detail.html#decision", context)
    response.write(render_to_string("governance/approval_detail.html#status", context, request=request))
    response.write(render_to_string("governance/approval_detail.html#timing", {**context, "oob": True}, request=request))
    return response


@require("approval.view")
def approval_badge(request):
    """The navigation's count of what waits for the user's groups (polled, and refreshed by the queue)."""
    return render(request, "governance/approval_badge.html", {"count": selectors.approval_pending_count(user=request.user)})


# --- policies ---------------------------------------------------------------------------


@require("policy.view")
def policy_list(request):
    current = PolicySetVersion.objects.order_by("-number").first()
    return render(request, "governance/policy_list.html", {
        "policies": policies(),
        "current_set": current,
        "can_manage": can(request.user, "policy.manage"),
    })


def _policy(name) -> Policy:
    return get_object_or_404(policies(), name=name)


@require("policy.manage")
def policy_new(request):
    initial = {}
    template = request.GET.get("template")
    if template in TEMPLATES:
        description, body = TEMPLATES[template]
        initial = {"name": template, "description": description, "body": body, "reason": "from starter template"}
    form = PolicyForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        try:
            policy = services.policy_create(by=request.user, **form.cleaned_data)
        except ValidationError as error:
            apply_errors(form, error)
        else:
            messages.success(request, f"Policy {policy.name} published.")
            return redirect("governance:policy", name=policy.name)
    return render(request, "governance/policy_form.html", {
        "form": form, "title": "New policy", "templates": TEMPLATES,
    }, status=400 if form.errors else 200)


@require("policy.manage")
def policy_edit(request, name):
    policy = _policy(name)
    form = PolicyEditForm(request.POST or None, initial={"description": policy.description, "body": policy.current.body})
    if request.method == "POST" and form.is_valid():
        try:
            services.policy_update(policy=policy, by=request.user, **form.cleaned_data)
        except ValidationError as error:
            apply_errors(form, error)
        else:
            messages.success(request, f"Policy {policy.name} updated and published.")
            return redirect("governance:policy", name=policy.name)
    return render(request, "governance/policy_form.html", {
        "form": form, "policy": policy, "title": f"Edit {policy.name}", "templates": TEMPLATES,
    }, status=400 if form.errors else 200)


@require("policy.view")
@require_POST
def policy_validate(request):
    """htmx: Cedar's verdict on the editor's text, as a fragment of the editor page."""
    body = request.POST.get("body", "")
    problems = services.policy_problems(body) if body.strip() else []
    return render(request, "governance/policy_form.html#verdict", {"problems": problems, "checked": bool(body.strip())})


def _diff(old: str, new: str) -> list[tuple[str, str]]:
    lines = difflib.unified_diff(old.splitlines(), new.splitlines(), lineterm="", n=3)
    rows = []
    for line in list(lines)[2:]:
        kind = "add" if line.startswith("+") else "del" if line.startswith("-") else "hunk" if line.startswith("@@") else "ctx"
        rows.append((kind, line))
    return rows


@require("policy.view")
def policy_detail(request, name):
    policy = _policy(name)
    versions = list(policy.versions.select_related("created_by").order_by("-number"))
    history = []
    for index, version in enumerate(versions):
        previous = versions[index + 1] if index + 1 < len(versions) else None
        history.append({"version": version, "diff": _diff(previous.body if previous else "", version.body)})
    return render(request, "governance/policy_detail.html", {
        "policy": policy, "history": history, "can_manage": can(request.user, "policy.manage"),
    })


@require("policy.manage")
@require_POST
def policy_restore(request, name):
    policy = _policy(name)
    try:
        number = int(request.POST.get("version", ""))
        version = services.policy_restore(policy=policy, number=number, by=request.user,
                                          reason=request.POST.get("reason", ""))
    except ValueError:
        messages.error(request, "Choose a version to restore.")
    except ValidationError as error:
        messages.error(request, " ".join(error.messages))
    else:
        messages.success(request, f"Version {number} restored as version {version.number} and published.")
    return redirect("governance:policy", name=policy.name)


@require("policy.manage")
@require_POST
def policy_toggle(request, name):
    policy = _policy(name)
    enabled = request.POST.get("enabled") == "1"
    try:
        services.policy_set_enabled(policy=policy, enabled=enabled, by=request.user, reason=request.POST.get("reason", ""))
    except ValidationError as error:
        messages.error(request, " ".join(error.messages))
    else:
        messages.success(request, f"Policy {policy.name} {'enabled' if enabled else 'disabled'} and published.")
    return redirect("governance:policy", name=policy.name)


@require("policy.view")
def policy_simulate(request):
    initial = {}
    if request.GET.get("policy"):
        policy = Policy.objects.filter(name=request.GET["policy"]).select_related("current").first()
        if policy is not None:
            initial = {"name": policy.name, "body": policy.current.body}
    form = SimulateForm(request.POST or None, initial=initial)
    result = None
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        change = {"name": data["name"], "enabled": not data["disable"]}
        if not data["disable"]:
            if not data["body"].strip():
                form.add_error("body", "Write the draft policy, or tick the box to simulate switching it off.")
            change["body"] = data["body"]
        if not form.errors:
            try:
                result = simulation.simulate(changes=[change], limit=data["limit"])
            except ValidationError as error:
                form.add_error("body", error.messages)
    return render(request, "governance/policy_simulate.html", {"form": form, "result": result},
                  status=400 if form.errors else 200)


@require("policy.view")
def policy_sets(request):
    return render(request, "governance/policy_sets.html", {
        "sets": PolicySetVersion.objects.select_related("created_by").order_by("-number")[:200],
    })


# --- roles and grants ----------------------------------------------------------------------


@require("agent.view")
def role_list(request):
    form = RoleForm(request.POST or None)
    if request.method == "POST":
        if not can(request.user, "policy.manage"):
            raise PermissionDenied("policy.manage")
        if form.is_valid():
            try:
                role = services.role_create(by=request.user, **form.cleaned_data)
            except ValidationError as error:
                apply_errors(form, error)
            else:
                messages.success(request, f"Role {role.name} created.")
                return redirect("governance:roles")
    return render(request, "governance/role_list.html", {
        "roles": Role.objects.all(), "form": form, "can_manage": can(request.user, "policy.manage"),
    }, status=400 if form.errors else 200)


@require("policy.manage")
def role_edit(request, name):
    role = get_object_or_404(Role, name=name)
    form = RoleForm(request.POST or None, initial={"name": role.name, "description": role.description, "scopes": role.scopes})
    form.fields["name"].disabled = True
    if request.method == "POST" and form.is_valid():
        try:
            services.role_update(role=role, by=request.user, scopes=form.cleaned_data["scopes"],
                                 description=form.cleaned_data["description"])
        except ValidationError as error:
            apply_errors(form, error)
        else:
            messages.success(request, f"Role {role.name} saved.")
            return redirect("governance:roles")
    return render(request, "governance/role_form.html", {"form": form, "role": role}, status=400 if form.errors else 200)


@require("agent.manage")
@require_POST
def grant_create(request, agent_id):
    agent = agent_selectors.agent_get(user=request.user, agent_id=agent_id)
    form = GrantForm(request.POST)
    if form.is_valid():
        days = form.cleaned_data["expires_in_days"]
        try:
            services.role_grant(agent=agent, role=form.cleaned_data["role"], by=request.user,
                                expires_at=timezone.now() + dt.timedelta(days=days) if days else None)
        except (ValidationError, Conflict) as error:
            messages.error(request, error.message if isinstance(error, Conflict) else " ".join(error.messages))
        else:
            messages.success(request, f"Role {form.cleaned_data['role'].name} granted to {agent.name}.")
    else:
        messages.error(request, "Choose a role and, optionally, a number of days between 1 and 3650.")
    return redirect("agents:detail", agent_id=agent.pk)


@require("agent.manage")
@require_POST
def grant_revoke(request, agent_id, grant_id):
    agent = agent_selectors.agent_get(user=request.user, agent_id=agent_id)
    grant = get_object_or_404(RoleGrant, pk=grant_id, agent=agent)
    services.role_revoke(grant=grant, by=request.user)
    messages.success(request, f"Role {grant.role.name} revoked from {agent.name}.")
    return redirect("agents:detail", agent_id=agent.pk)


# --- a person's API tokens -------------------------------------------------------------------


@login_required
def api_tokens(request):
    """A person's own API tokens: issue (shown once) and revoke."""
    form = ApiTokenForm(request.POST or None)
    new_secret = None
    if request.method == "POST" and "revoke" in request.POST:
        try:
            token = ApiToken.objects.get(pk=request.POST["revoke"], user=request.user)
        except (ApiToken.DoesNotExist, ValidationError, ValueError):
            raise Http404("No such token.") from None
        services.api_token_revoke(token=token, by=request.user)
        messages.success(request, f"Token {token.name} revoked.")
        return redirect("api-tokens")
    if request.method == "POST" and form.is_valid():
        days = form.cleaned_data["expires_in_days"]
        try:
            _, new_secret = services.api_token_issue(
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



# --- data views -------------------------------------------------------------------------------------


@require("data_view.view")
def data_view_list(request):
    form = DataViewForm(request.POST or None)
    if request.method == "POST":
        if not can(request.user, "data_view.manage"):
            raise PermissionDenied("data_view.manage")
        if form.is_valid():
            try:
                view = services.data_view_create(by=request.user, **form.cleaned_data)
            except ValidationError as error:
                apply_errors(form, error)
            else:
                messages.success(request, f"Data view {view.name} registered as {view.get_classification_display()}.")
                return redirect("governance:data-views")
    return render(request, "governance/data_view_list.html", {
        "views": selectors.data_view_list(user=request.user), "form": form,
        "can_manage": can(request.user, "data_view.manage"), "sinks": selectors.data_sink_list(user=request.user),
    }, status=400 if form.errors else 200)


@require("data_view.manage")
def data_view_edit(request, name):
    view = selectors.data_view_get(user=request.user, name=name)
    form = DataViewEditForm(request.POST or None, initial={
        "classification": view.classification, "team": view.team, "description": view.description, "active": view.active,
        "source": view.source, "columns": ", ".join(view.columns), "masks": view.masks, "row_rules": view.row_rules,
        "max_rows": view.max_rows, "base_classification": view.base_classification,
    })
    if request.method == "POST" and form.is_valid():
        try:
            services.data_view_update(view=view, by=request.user, **form.cleaned_data)
        except ValidationError as error:
            apply_errors(form, error)
        else:
            messages.success(request, f"Data view {view.name} saved.")
            return redirect("governance:data-views")
    return render(request, "governance/data_view_form.html", {"form": form, "view": view},
                  status=400 if form.errors else 200)
