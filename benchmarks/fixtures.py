"""A bench fleet in the bench database: agents, keys, roles and a large policy set."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.core.management import call_command

from agents import services as agent_services
from agents.models import Agent, Team
from benchmarks.policies import ROLES, TEAMS, generate_policies, roles_of, team_of
from governance.models import Policy, PolicySetVersion, PolicyVersion, Role
from governance.policy_templates import TEMPLATES
from governance.scopes import SCOPES


def reset_database() -> None:
    """The bench database is created empty for each run (scripts/devstack.py bench)."""
    call_command("migrate", verbosity=0)


def build_fleet(agent_count: int, policy_count: int) -> tuple[list[Agent], list[str]]:
    """Agents agent-000.. with keys; the starter templates plus generated policies."""
    User = get_user_model()
    admin = User.objects.create_user("bench-admin", password="x")
    for t in range(TEAMS):
        Team.objects.create(name=team_of(t), display_name=team_of(t))
    for r in range(ROLES):
        Role.objects.create(name=f"role-{r:02d}", scopes=list(SCOPES))
    agents, secrets = [], []
    for i in range(agent_count):
        agent = agent_services.agent_register(
            name=f"agent-{i:03d}", owner=admin, team=Team.objects.get(name=team_of(i)), by=admin,
            roles=roles_of(i), allowed_models=[f"model-{n:02d}" for n in range(40)], clearance=i % 4,
        )
        _, secret = agent_services.agent_key_issue(agent=agent, by=admin)
        agents.append(agent)
        secrets.append(secret)
    from django.utils import timezone

    from billing.models import Price

    Price.objects.bulk_create([
        Price(kind="model", name=f"model-{n:02d}", input_per_million_micros=1_000_000, output_per_million_micros=2_000_000,
              effective_from=timezone.now(), created_by=admin)
        for n in range(40)
    ])
    # Publish the whole set as one version (bulk: 2,000 publishes would only slow set-up).
    rows = [(name, TEMPLATES[name][1]) for name in ("baseline-permit", "expensive-calls-need-finance",
                                                     "confidential-data-needs-clearance", "no-deep-delegation")]
    rows += [(row.name, row.body) for row in generate_policies(policy_count)]
    policies = Policy.objects.bulk_create([Policy(name=name, owner=admin, created_by=admin) for name, _ in rows])
    versions = PolicyVersion.objects.bulk_create([
        PolicyVersion(policy=policy, number=1, body=body, reason="bench", created_by=admin)
        for policy, (_, body) in zip(policies, rows)
    ])
    for policy, version in zip(policies, versions):
        policy.current = version
    Policy.objects.bulk_update(policies, ["current"])
    PolicySetVersion.objects.create(number=1, members=[[name, 1] for name, _ in sorted(rows)], reason="bench", created_by=admin)
    return agents, secrets
