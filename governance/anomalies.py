"""Anomaly detection: each agent against its own baseline.

Beat runs `anomaly_scan` every minute over the agents that acted lately. Each rule compares what an agent did
in a recent window with what it usually does (its own history, never a fleet average):

- spend_rate    spend in the last window against the agent's average per window over the baseline days
- denial_rate   the share of its requests denied in the last window against its usual share
- new_resource  a model, tool or endpoint it was allowed to use for the first time in the baseline days
- burst         requests in the last minute against its usual requests per minute
- failing_runs  its last runs failed, so many in a row

Thresholds and windows are WARDEN_ANOMALY_RULES (JSON, merged over DEFAULT_RULES). An anomaly becomes one
Alert (a unique key per agent, rule and window: a burst of requests makes one alert, not one per request),
is audited (`anomaly.detected`), delivered after commit (in the console, e-mail to the agent's owner and to
security, a signed webhook), and may suspend the agent when the rule says so (off by default). Each alert
says what was normal and what happened, with a link to the evidence.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import re
from dataclasses import dataclass

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Count, Q, Sum
from django.utils import timezone

logger = logging.getLogger(__name__)

DEFAULT_RULES = {
    "spend_rate": {"enabled": True, "window_minutes": 60, "baseline_days": 7, "factor": 3, "min_micros": 100_000,
                   "min_history_hours": 24, "suspend": False},
    "denial_rate": {"enabled": True, "window_minutes": 60, "baseline_days": 7, "min_requests": 10,
                    "min_percent": 50, "factor": 3, "suspend": False},
    "new_resource": {"enabled": True, "baseline_days": 30, "min_history": 20, "suspend": False},
    "burst": {"enabled": True, "window_seconds": 60, "baseline_days": 7, "factor": 10, "min_requests": 30,
              "min_history_hours": 24, "suspend": False},
    "failing_runs": {"enabled": True, "in_a_row": 3, "suspend": False},
}


def rules() -> dict:
    """DEFAULT_RULES with WARDEN_ANOMALY_RULES over them, rule by rule."""
    try:
        configured = json.loads(settings.WARDEN_ANOMALY_RULES or "{}")
    except ValueError:
        logger.error("WARDEN_ANOMALY_RULES is not JSON; the default rules apply")
        configured = {}
    merged = {}
    for name, default in DEFAULT_RULES.items():
        given = configured.get(name) if isinstance(configured, dict) else None
        merged[name] = {**default, **{k: v for k, v in (given or {}).items() if k in default}}
    return merged


@dataclass(frozen=True)
class Finding:
    kind: str
    key: str  # one alert per key, ever
    title: str
    normal: str
    observed: str
    evidence: str  # a console path
    details: dict


def _history(agent, since: dt.datetime, base_from: dt.datetime, rule) -> dt.timedelta | None:
    """How much of the baseline the agent has lived (from its first request in it), or None if less than the rule's
    minimum: a young agent has no usual yet, and its first busy hour is not an anomaly."""
    from django.db.models import Min

    from .models import Action

    first = Action.objects.filter(agent=agent, created_at__gt=base_from, created_at__lte=since).aggregate(
        first=Min("created_at"))["first"]
    if first is None:
        return None
    lived = since - first
    return lived if lived >= dt.timedelta(hours=rule.get("min_history_hours", 24)) else None


def _money(micros) -> str:
    from billing.services import dollars

    return dollars(int(micros))


def _evidence(agent, since: dt.datetime, **extra) -> str:
    from urllib.parse import urlencode

    return "/audit/?" + urlencode({"agent": agent.name, "since": since.strftime("%Y-%m-%dT%H:%M"), **extra})


def spend_rate(agent, now, rule) -> Finding | None:
    from billing.models import LedgerEntry

    window = dt.timedelta(minutes=rule["window_minutes"])
    since, base_from = now - window, now - window - dt.timedelta(days=rule["baseline_days"])
    spent = LedgerEntry.objects.filter(agent=agent, occurred_at__gt=since).aggregate(s=Sum("cost_micros"))["s"] or 0
    if spent < rule["min_micros"]:
        return None
    lived = _history(agent, since, base_from, rule)
    if lived is None:
        return None
    before = (LedgerEntry.objects.filter(agent=agent, occurred_at__gt=base_from, occurred_at__lte=since)
              .aggregate(s=Sum("cost_micros"))["s"] or 0)
    windows = lived / window
    usual = before / windows
    if spent < rule["min_micros"] or spent < rule["factor"] * max(usual, 1):
        return None
    minutes = rule["window_minutes"]
    return Finding(
        "spend_rate", f"spend_rate:{agent.pk}:{now.date().isoformat()}",
        f"{agent.name} is spending {spent / max(usual, 1):.0f}x its usual rate",
        f"{_money(usual)} per {minutes} minutes (its average over the past {rule['baseline_days']} days)",
        f"{_money(spent)} in the last {minutes} minutes", _evidence(agent, since),
        {"spent_micros": spent, "usual_micros": int(usual), "window_minutes": minutes})


def denial_rate(agent, now, rule) -> Finding | None:
    from .models import Action

    window = dt.timedelta(minutes=rule["window_minutes"])
    since, base_from = now - window, now - window - dt.timedelta(days=rule["baseline_days"])
    counts = Action.objects.filter(agent=agent, created_at__gt=base_from).aggregate(
        recent=Count("id", filter=Q(created_at__gt=since)),
        recent_denied=Count("id", filter=Q(created_at__gt=since, outcome="denied")),
        before=Count("id", filter=Q(created_at__lte=since)),
        before_denied=Count("id", filter=Q(created_at__lte=since, outcome="denied")))
    if counts["recent"] < rule["min_requests"]:
        return None
    share = 100 * counts["recent_denied"] / counts["recent"]
    usual = 100 * counts["before_denied"] / counts["before"] if counts["before"] else 0.0
    if share < rule["min_percent"] or share < rule["factor"] * usual:
        return None
    return Finding(
        "denial_rate", f"denial_rate:{agent.pk}:{now.date().isoformat()}",
        f"{agent.name} is being denied {share:.0f}% of the time",
        f"{usual:.0f}% of its requests denied over the past {rule['baseline_days']} days",
        f"{counts['recent_denied']} of its {counts['recent']} requests denied in the last "
        f"{rule['window_minutes']} minutes", _evidence(agent, since, outcome="denied"),
        {"recent": counts["recent"], "denied": counts["recent_denied"], "usual_percent": round(usual, 1)})


def new_resources(agent, now, rule, *, since: dt.datetime) -> list[Finding]:
    """Models, tools and endpoints it was allowed for the first time (in the baseline days) since the last scan."""
    from .models import Action

    base_from = since - dt.timedelta(days=rule["baseline_days"])
    history = Action.objects.filter(agent=agent, created_at__gt=base_from, created_at__lte=since)
    if history.count() < rule["min_history"]:  # a new agent: everything is new, nothing is unusual
        return []
    fresh: dict[tuple[str, str], dict] = {}
    for action, resource, cost in (Action.objects.filter(agent=agent, outcome="allowed", created_at__gt=since,
                                                          action__in=["llm.call", "tool.call", "tool.http",
                                                                      "external.call"])
                                   .values_list("action", "resource", "estimated_cost_micros")[:1000]):
        name = _used(action, resource)
        row = fresh.setdefault((action, name), {"calls": 0, "cost": 0})
        row["calls"] += 1
        row["cost"] += cost or 0
    if not fresh:
        return []
    known = {_used(action, resource) for action, resource in
             history.filter(outcome="allowed").values_list("action", "resource").distinct()[:5000]}
    findings = []
    for (action, name), row in sorted(fresh.items()):
        if name in known:
            continue
        usual = sorted(known)[:8]
        digest = hashlib.sha256(f"{action}:{name}".encode()).hexdigest()[:32]
        findings.append(Finding(
            "new_resource", f"new_resource:{agent.pk}:{digest}",
            f"{agent.name} used {name} for the first time",
            f"it used {', '.join(usual) or 'nothing else'} in the past {rule['baseline_days']} days",
            f"{row['calls']} {action} of {name} allowed since {since:%H:%M} ({_money(row['cost'])} estimated)",
            _evidence(agent, since, action=f"gate.{action}"), {"action": action, "resource": name, "calls": row["calls"]}))
    return findings


def _used(action: str, resource: str) -> str:
    """What counts as one thing used: a model or tool by name, an endpoint by its host (not every URL)."""
    if action in ("tool.http", "external.call"):
        from billing.services import endpoint_host

        return endpoint_host(resource) or "an unnamed host"
    return resource


def burst(agent, now, rule) -> Finding | None:
    from .models import Action

    window = dt.timedelta(seconds=rule["window_seconds"])
    since, base_from = now - window, now - window - dt.timedelta(days=rule["baseline_days"])
    recent = Action.objects.filter(agent=agent, created_at__gt=since).count()
    if recent < rule["min_requests"]:
        return None
    lived = _history(agent, since, base_from, rule)
    if lived is None:
        return None
    before = Action.objects.filter(agent=agent, created_at__gt=base_from, created_at__lte=since).count()
    usual = before / (lived / window)
    if recent < rule["factor"] * max(usual, 1):
        return None
    return Finding(
        "burst", f"burst:{agent.pk}:{now:%Y-%m-%dT%H}",
        f"{agent.name} made {recent} requests in {rule['window_seconds']} s",
        f"{usual:.1f} requests per {rule['window_seconds']} s (its average over the past {rule['baseline_days']} days)",
        f"{recent} requests in the last {rule['window_seconds']} s", _evidence(agent, since),
        {"recent": recent, "usual": round(usual, 2)})


def failing_runs(agent, now, rule) -> Finding | None:
    from agents.models import RUN_FINAL, AgentRun

    last = list(AgentRun.objects.filter(agent=agent, status__in=RUN_FINAL).order_by("-finished_at", "-created_at")
                .values_list("pk", "status", "error")[:rule["in_a_row"]])
    if len(last) < rule["in_a_row"] or any(status != "failed" for _, status, _ in last):
        return None
    succeeded = AgentRun.objects.filter(agent=agent, status="succeeded")
    # One alert per streak of failures (keyed by its first run), however long it grows; a success ends it.
    since_success = succeeded.order_by("-finished_at").values_list("finished_at", flat=True).first()
    streak = AgentRun.objects.filter(agent=agent, status="failed")
    if since_success is not None:
        streak = streak.filter(finished_at__gt=since_success)
    first = streak.order_by("finished_at", "created_at").values_list("pk", flat=True).first()
    return Finding(
        "failing_runs", f"failing_runs:{agent.pk}:{first}",
        f"{agent.name}'s last {len(last)} runs failed",
        f"{succeeded.count()} of its runs succeeded before", f"{len(last)} runs failed in a row; the last: "
        f"{(last[0][2] or 'no error recorded')[:200]}", f"/runs/{last[0][0]}/",
        {"runs": [str(pk) for pk, _, _ in last]})


def anomaly_scan(*, now: dt.datetime | None = None) -> list:
    """Evaluate every rule for the agents that acted (or whose runs ended) in the last hour; the alerts created."""
    from django.core.cache import cache

    now = now or timezone.now()
    if not cache.add("warden:anomaly-scan", "1", timeout=300):  # a scan still running: this one is not needed
        return []
    try:
        return _scan(now)
    finally:
        cache.delete("warden:anomaly-scan")


def _scan(now) -> list:
    from agents.models import Agent, AgentRun

    configured = rules()
    since = now - dt.timedelta(minutes=15)  # what the last scans may not have seen yet (new resources)
    hour_ago = now - dt.timedelta(hours=1)
    agents = Agent.objects.filter(Q(last_seen_at__gt=hour_ago) | Q(pk__in=AgentRun.objects.filter(
        finished_at__gt=hour_ago).values("agent_id")))
    created = []
    for agent in agents.select_related("owner", "team"):
        findings = []
        for name, check in (("spend_rate", spend_rate), ("denial_rate", denial_rate), ("burst", burst),
                            ("failing_runs", failing_runs)):
            if configured[name]["enabled"]:
                findings.append(check(agent, now, configured[name]))
        if configured["new_resource"]["enabled"]:
            findings += new_resources(agent, now, configured["new_resource"], since=since)
        for finding in filter(None, findings):
            alert = _raise(agent, finding, suspend=bool(configured[finding.kind]["suspend"]), now=now)
            if alert is not None:
                created.append(alert)
    return created


def _raise(agent, finding: Finding, *, suspend: bool, now) -> object | None:
    """One alert per key: audited, delivered after commit, and the agent suspended if the rule says so."""
    from audit.services import audit_record

    from .models import Alert

    try:
        with transaction.atomic():
            alert = Alert.objects.create(kind=finding.kind, agent=agent, key=finding.key,
                                         title=_plain(finding.title, 200), normal=_plain(finding.normal, 500),
                                         observed=_plain(finding.observed, 500),
                                         evidence=finding.evidence[:500], details=finding.details, created_at=now)
            audit_record(action="anomaly.detected", agent=agent, team=agent.team.name,
                         resource=f"alert:{alert.pk}", outcome=finding.kind,
                         reasons=[f"{finding.observed}; normal: {finding.normal}"],
                         payload={"alert_id": str(alert.pk), "kind": finding.kind, "details": finding.details,
                                  "evidence": finding.evidence, "suspend": suspend})
            transaction.on_commit(lambda: _deliver_later(alert.pk), robust=True)
    except IntegrityError:
        return None  # raised before (this window's alert exists): one alert, not one per request
    if suspend and agent.status == "active":
        from agents.services import agent_suspend

        try:
            agent_suspend(agent=agent, by=None, reason=f"anomaly: {finding.title}")
            Alert.objects.filter(pk=alert.pk).update(suspended=True)
        except Exception:
            logger.exception("could not suspend %s after an anomaly", agent.name)
    return alert


def _plain(text: str, limit: int) -> str:
    """One line of printable text (names in it may come from agents' requests): fit for a mail subject."""
    return re.sub(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]+", " ", text)[:limit]


def _deliver_later(alert_id) -> None:
    from .tasks import alert_deliver

    alert_deliver.delay(str(alert_id))


def deliver(alert_id) -> None:
    """E-mail the agent's owner and security; call the signed webhook. Recorded on the alert."""
    from django.contrib.auth import get_user_model
    from django.core.mail import send_mail

    from billing.alerts import post_signed

    from .models import Alert

    alert = Alert.objects.select_related("agent__owner").filter(pk=alert_id).first()
    if alert is None:
        return
    updates = {}
    link = settings.WARDEN_PUBLIC_URL.rstrip("/") + alert.evidence if settings.WARDEN_PUBLIC_URL else alert.evidence
    if alert.emailed_at is None:
        recipients = set(get_user_model().objects.filter(groups__name="security", is_active=True).exclude(email="")
                         .values_list("email", flat=True))
        if alert.agent.owner.email:
            recipients.add(alert.agent.owner.email)
        if recipients:
            try:  # the webhook goes out whatever the mail does
                send_mail(f"[Warden] {_plain(alert.title, 150)}",
                          f"{alert.observed}.\nNormal: {alert.normal}.\nEvidence: {link}",
                          settings.DEFAULT_FROM_EMAIL, sorted(recipients))
                updates["emailed_at"] = timezone.now()
            except Exception:
                logger.exception("alert %s: the e-mail could not be sent", alert.pk)
    url = settings.WARDEN_ALERT_WEBHOOK_URL
    if url and not alert.webhook_status.startswith("2"):
        payload = {"id": str(alert.pk), "kind": alert.kind, "agent": alert.agent.name, "title": alert.title,
                   "normal": alert.normal, "observed": alert.observed, "evidence": link, "suspended": alert.suspended,
                   "created_at": alert.created_at.isoformat()}
        try:
            updates["webhook_status"] = str(post_signed(url, settings.WARDEN_ALERT_WEBHOOK_SECRET, payload))
        except OSError as exc:
            updates["webhook_status"] = f"failed: {type(exc).__name__}"[:100]
    if updates:
        Alert.objects.filter(pk=alert.pk).update(**updates)
    if updates.get("webhook_status", "").startswith("failed"):
        raise ConnectionError(updates["webhook_status"])  # the task retries
