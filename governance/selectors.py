"""Reads of the governance domain."""

from __future__ import annotations

from django.db.models import QuerySet

from .models import Policy, PolicySetVersion, PolicyVersion
from .policy_engine import CompiledPolicySet, PolicyRow, compiled


def current_policy_set() -> tuple[int, str]:
    """(number, publish time) of the newest set; the time tells a restored database apart."""
    row = PolicySetVersion.objects.order_by("-number").values_list("number", "created_at").first()
    return (row[0], row[1].isoformat()) if row else (0, "")


def policy_set_rows(number: int) -> list[PolicyRow]:
    if number == 0:
        return []
    members = PolicySetVersion.objects.values_list("members", flat=True).get(number=number)
    wanted = {(name, version) for name, version in members}
    versions = PolicyVersion.objects.filter(
        policy__name__in=[name for name, _ in members]
    ).values_list("policy__name", "number", "body")
    found = {(name, number): body for name, number, body in versions if (name, number) in wanted}
    return [PolicyRow(name, version, found[(name, version)]) for name, version in sorted(wanted)]


def policy_set_for(number: int, published: str) -> CompiledPolicySet:
    """The compiled set of a version the caller has just read (number, publish time)."""
    return compiled(number, published, lambda: policy_set_rows(number))


def active_policy_set() -> CompiledPolicySet:
    """The newest published set, compiled once per process and version.

    Reading the number is one indexed query per decision, so a publish
    reaches every web and worker process on its very next decision.
    """
    return policy_set_for(*current_policy_set())


def policy_list() -> QuerySet[Policy]:
    return Policy.objects.select_related("current", "owner")
