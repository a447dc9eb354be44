"""The Grafana dashboard in the repo (deploy/grafana/dashboards/warden.json): its panels, listed, and every
metric they query is one Warden exports (a typo would be an empty panel nobody notices)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ask

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "dashboards" / "warden.json"


def panels() -> list[dict]:
    return [panel for panel in json.loads(DASHBOARD.read_text())["panels"] if panel["type"] != "row"]


def test_the_dashboard_covers_fleet_money_approvals_latency_and_errors():
    dashboard = json.loads(DASHBOARD.read_text())
    rows = [panel["title"] for panel in dashboard["panels"] if panel["type"] == "row"]
    assert rows == ["Fleet", "Money", "Approvals", "Latency", "Errors"]
    titles = [panel["title"] for panel in panels()]
    assert len(titles) == len(set(titles)) == 18
    for title in ("Gate decisions per second, by outcome", "Spend rate by team ($ per hour)",
                  "Approvals pending, by group", "Gate decision time (p50, p99)", "Upstream errors per second"):
        assert title in titles
    assert len({panel["id"] for panel in dashboard["panels"]}) == len(dashboard["panels"])
    assert all(panel["targets"] and all(target["expr"] for target in panel["targets"]) for panel in panels())


@pytest.mark.django_db(transaction=True)
def test_every_metric_the_dashboard_queries_is_exported(bot, policy, client, settings):
    from governance import metrics

    policy("all", "permit(principal, action, resource);")
    action = ask(bot).json()["id"]
    bot.post(f"/api/v1/actions/{action}/complete/", {"status": "succeeded", "usage": {"input_tokens": 10,
                                                                                      "output_tokens": 5}},
             format="json")
    settings.WARDEN_METRICS_TOKEN = "t"
    scraped = client.get("/metrics", HTTP_AUTHORIZATION="Bearer t").content.decode()
    families = {family.name for family in text_string_to_metric_families(scraped)}
    assert {"warden_gate_decisions", "warden_spent_micros", "warden_approvals_pending"} <= families
    # Families that have no sample until something happens (an upstream error, a run) are defined all the same.
    defined = {collector._name for collector in vars(metrics).values()
               if hasattr(collector, "_name") and hasattr(collector, "_type")} | families
    suffixes = ("_total", "_bucket", "_sum", "_count")
    for panel in panels():
        for target in panel["targets"]:
            for name in re.findall(r"\bwarden_[a-z_]+", target["expr"]):
                base = next((name[: -len(s)] for s in suffixes if name.endswith(s) and name[: -len(s)] in defined),
                            name)
                assert base in defined, f"{panel['title']}: {name} is not a metric Warden exports"
