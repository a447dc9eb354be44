from __future__ import annotations

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from agents.models import Clearance, Team
from billing.api.serializers import StrictMicros
from governance.models import Action, Role
from governance.scopes import SCOPES


class ActionRequestInput(serializers.Serializer):
    action = serializers.CharField(max_length=64)
    resource = serializers.CharField(max_length=255, trim_whitespace=False)
    context = serializers.DictField(required=False, default=dict)
    idempotency_key = serializers.CharField(max_length=128, required=False, allow_blank=False)
    correlation_id = serializers.RegexField(r"^[A-Za-z0-9][A-Za-z0-9._:\-]{7,127}$", required=False)
    on_behalf_of = serializers.UUIDField(required=False)

    def validate_idempotency_key(self, value: str) -> str:
        from governance.flow import RESERVED_KEY_PREFIXES

        if value.startswith(RESERVED_KEY_PREFIXES):
            raise serializers.ValidationError(f"Keys beginning {' or '.join(map(repr, RESERVED_KEY_PREFIXES))} are "
                                              "reserved for Warden's runtime and gateway.")
        return value


class ApprovalOutput(serializers.Serializer):
    id = serializers.UUIDField()
    group = serializers.CharField()
    status = serializers.CharField()
    reasons = serializers.ListField(child=serializers.CharField())
    required_approvals = serializers.IntegerField()
    expires_at = serializers.DateTimeField(allow_null=True)
    decided_at = serializers.DateTimeField(allow_null=True)


class ActionOutput(serializers.Serializer):
    id = serializers.UUIDField()
    agent = serializers.CharField(source="agent.name")
    action = serializers.CharField()
    resource = serializers.CharField()
    outcome = serializers.CharField()
    status = serializers.CharField()
    reasons = serializers.ListField(child=serializers.CharField())
    policies = serializers.ListField(child=serializers.CharField(), source="policy_ids")
    policy_version = serializers.IntegerField()
    observed = serializers.DictField(allow_null=True)
    estimated_cost_micros = serializers.IntegerField()
    reserved = serializers.IntegerField(source="reserved_micros")
    actual_cost_micros = serializers.IntegerField(allow_null=True)
    usage = serializers.DictField(allow_null=True, help_text="the completion report: status, usage, usage_source")
    delegation_chain = serializers.ListField(child=serializers.DictField())
    approval = serializers.SerializerMethodField()
    correlation_id = serializers.CharField()
    created_at = serializers.DateTimeField()
    completed_at = serializers.DateTimeField(allow_null=True)

    @extend_schema_field(ApprovalOutput(allow_null=True))
    def get_approval(self, action: Action) -> dict | None:
        try:
            approval = action.approval
        except Action.approval.RelatedObjectDoesNotExist:
            return None
        return ApprovalOutput(approval).data


_DATETIME = serializers.DateTimeField()


def _strings(values):
    return None if values is None else [None if item is None else str(item) for item in values]


def _mapping(value):
    return None if value is None else {str(key): item for key, item in value.items()}


def action_output(action: Action) -> dict:
    """What `ActionOutput(action).data` gives, without DRF building and copying nineteen fields for every
    answer of the gate (a third of a bare request's time). ActionOutput stays the OpenAPI schema;
    tests/gate/test_action_output.py holds the two equal."""
    try:
        approval = action.approval
    except Action.approval.RelatedObjectDoesNotExist:
        approval = None
    return {
        "id": str(action.id),
        "agent": str(action.agent.name),
        "action": str(action.action),
        "resource": str(action.resource),
        "outcome": str(action.outcome),
        "status": str(action.status),
        "reasons": _strings(action.reasons),
        "policies": _strings(action.policy_ids),
        "policy_version": None if action.policy_version is None else int(action.policy_version),
        "observed": _mapping(action.observed),
        "estimated_cost_micros": int(action.estimated_cost_micros),
        "reserved": int(action.reserved_micros),
        "actual_cost_micros": None if action.actual_cost_micros is None else int(action.actual_cost_micros),
        "usage": _mapping(action.usage),
        "delegation_chain": None if action.delegation_chain is None else [_mapping(hop) for hop in action.delegation_chain],
        "approval": None if approval is None else ApprovalOutput(approval).data,
        "correlation_id": str(action.correlation_id),
        "created_at": _DATETIME.to_representation(action.created_at),
        "completed_at": _DATETIME.to_representation(action.completed_at),
    }


class CompleteInput(serializers.Serializer):
    status = serializers.ChoiceField(choices=["succeeded", "failed"])
    usage = serializers.DictField(
        required=False, help_text="What was used: model, input_tokens, output_tokens, cached_tokens, reasoning_tokens, "
                                  "calls (whole numbers). Recorded as the agent's claim (usage_source: agent).")
    cost = serializers.JSONField(
        required=False, help_text="What the agent thinks it cost, in integer micro-dollars: kept as a remark. "
                                  "The charge is always Warden's price applied to the usage.")


class PolicyInput(serializers.Serializer):
    name = serializers.SlugField(max_length=100)
    body = serializers.CharField(max_length=20_000, trim_whitespace=False)
    description = serializers.CharField(max_length=2000, required=False, allow_blank=True, default="")
    reason = serializers.CharField(max_length=500, required=False, allow_blank=True, default="")
    enabled = serializers.BooleanField(required=False, default=True)


class PolicyUpdateInput(serializers.Serializer):
    body = serializers.CharField(max_length=20_000, trim_whitespace=False)
    description = serializers.CharField(max_length=2000, required=False, allow_blank=True)
    reason = serializers.CharField(max_length=500)


class PolicyBodyInput(serializers.Serializer):
    body = serializers.CharField(max_length=20_000, trim_whitespace=False)


class PolicyReasonInput(serializers.Serializer):
    reason = serializers.CharField(max_length=500)


class RestoreInput(serializers.Serializer):
    version = serializers.IntegerField(min_value=1)
    reason = serializers.CharField(max_length=500, required=False, allow_blank=True, default="")


class DraftPolicy(serializers.Serializer):
    name = serializers.SlugField(max_length=100)
    body = serializers.CharField(max_length=20_000, required=False, trim_whitespace=False)
    enabled = serializers.BooleanField(required=False, default=True)


class SimulateInput(serializers.Serializer):
    changes = DraftPolicy(many=True, help_text="Policies to add, change (body) or switch off (enabled=false)")
    limit = serializers.IntegerField(min_value=1, max_value=5000, required=False, default=500)


class ValidationOutput(serializers.Serializer):
    valid = serializers.BooleanField()
    errors = serializers.ListField(child=serializers.CharField())


class SimulatedChange(serializers.Serializer):
    action_id = serializers.UUIDField()
    agent = serializers.CharField()
    action = serializers.CharField()
    resource = serializers.CharField()
    created_at = serializers.DateTimeField()
    current = serializers.CharField()
    draft = serializers.CharField()
    current_policies = serializers.ListField(child=serializers.CharField())
    draft_policies = serializers.ListField(child=serializers.CharField())
    draft_reasons = serializers.ListField(child=serializers.CharField())


class SimulationOutput(serializers.Serializer):
    policy_set_version = serializers.IntegerField()
    draft_policies = serializers.IntegerField()
    decisions_replayed = serializers.IntegerField()
    changed = SimulatedChange(many=True)


class PolicyVersionOutput(serializers.Serializer):
    number = serializers.IntegerField()
    body = serializers.CharField()
    description = serializers.CharField()
    reason = serializers.CharField()
    created_at = serializers.DateTimeField()
    created_by = serializers.CharField(source="created_by.username", default=None)
    restored_from = serializers.IntegerField(allow_null=True)


class PolicyOutput(serializers.Serializer):
    name = serializers.CharField()
    description = serializers.CharField()
    owner = serializers.CharField(source="owner.username")
    enabled = serializers.BooleanField()
    version = serializers.IntegerField(source="current.number")
    body = serializers.CharField(source="current.body")
    created_at = serializers.DateTimeField()


class PolicySetOutput(serializers.Serializer):
    number = serializers.IntegerField()
    members = serializers.ListField()
    reason = serializers.CharField()
    created_at = serializers.DateTimeField()


class RoleInput(serializers.Serializer):
    name = serializers.SlugField(max_length=64)
    description = serializers.CharField(max_length=2000, required=False, allow_blank=True, default="")
    scopes = serializers.ListField(child=serializers.ChoiceField(choices=list(SCOPES)), max_length=len(SCOPES))


class RoleUpdateInput(serializers.Serializer):
    description = serializers.CharField(max_length=2000, required=False, allow_blank=True)
    scopes = serializers.ListField(child=serializers.ChoiceField(choices=list(SCOPES)), max_length=len(SCOPES), required=False)


class RoleOutput(serializers.Serializer):
    name = serializers.CharField()
    description = serializers.CharField()
    scopes = serializers.ListField(child=serializers.CharField())


class GrantInput(serializers.Serializer):
    role = serializers.SlugRelatedField(slug_field="name", queryset=Role.objects.all())
    expires_at = serializers.DateTimeField(required=False, allow_null=True, default=None)


class GrantOutput(serializers.Serializer):
    id = serializers.IntegerField()
    role = serializers.CharField(source="role.name")
    granted_by = serializers.CharField(source="granted_by.username", default=None)
    granted_at = serializers.DateTimeField()
    expires_at = serializers.DateTimeField(allow_null=True)
    revoked_at = serializers.DateTimeField(allow_null=True)



class DataViewShape(serializers.Serializer):
    """What a view serves (governance/dataviews.py), the same on create and update."""

    source = serializers.CharField(max_length=300, required=False, allow_blank=True,
                                   help_text="file:<path>.jsonl|.csv under WARDEN_DATA_DIR, or table:<alias>:<table>")
    columns = serializers.ListField(child=serializers.CharField(max_length=63), required=False, max_length=100)
    masks = serializers.DictField(child=serializers.ChoiceField(choices=[label for _, label in Clearance.choices]),
                                  required=False, help_text="{column: clearance needed to see it unmasked}")
    row_rules = serializers.ListField(child=serializers.DictField(), required=False, max_length=20,
                                      help_text='[{"below": clearance, "column": c, "in": [values]}]')
    max_rows = serializers.IntegerField(min_value=1, max_value=10_000, required=False)
    base_classification = serializers.ChoiceField(
        choices=[label for _, label in Clearance.choices], required=False, allow_null=True,
        help_text="The classification of the columns no mask names (null: the view's).")


class DataViewInput(DataViewShape):
    name = serializers.SlugField(max_length=100)
    classification = serializers.ChoiceField(choices=[label for _, label in Clearance.choices])
    team = serializers.SlugRelatedField(slug_field="name", queryset=Team.objects.all())
    description = serializers.CharField(max_length=2000, required=False, allow_blank=True, default="")


class DataViewUpdateInput(DataViewShape):
    classification = serializers.ChoiceField(choices=[label for _, label in Clearance.choices], required=False)
    team = serializers.SlugRelatedField(slug_field="name", queryset=Team.objects.all(), required=False)
    description = serializers.CharField(max_length=2000, required=False, allow_blank=True)
    active = serializers.BooleanField(required=False)


class DataViewOutput(serializers.Serializer):
    name = serializers.CharField()
    classification = serializers.CharField(source="get_classification_display")
    team = serializers.CharField(source="team.name")
    description = serializers.CharField()
    active = serializers.BooleanField()
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()
    updated_by = serializers.CharField(source="updated_by.username", default=None)
    source = serializers.CharField()
    columns = serializers.ListField(child=serializers.CharField())
    masks = serializers.DictField(child=serializers.CharField())
    row_rules = serializers.ListField(child=serializers.DictField())
    max_rows = serializers.IntegerField()
    base_classification = serializers.CharField(source="get_base_classification_display", allow_null=True)


class DataReadInput(serializers.Serializer):
    filters = serializers.DictField(required=False, default=dict, help_text="{column: value} equalities")
    columns = serializers.ListField(child=serializers.CharField(max_length=63), required=False, max_length=100)
    limit = serializers.IntegerField(min_value=1, required=False)
    purpose = serializers.CharField(max_length=500, required=False, allow_blank=True, default="")
    correlation_id = serializers.RegexField(r"^[A-Za-z0-9][A-Za-z0-9._:\-]{7,127}$", required=False)
    idempotency_key = serializers.CharField(max_length=128, required=False, allow_blank=False,
                                            help_text="Ask again with the same key once a person approved it.")
    validate_idempotency_key = ActionRequestInput.validate_idempotency_key


class DataReadOutput(serializers.Serializer):
    action = serializers.UUIDField()
    outcome = serializers.CharField()
    reasons = serializers.ListField(child=serializers.CharField())
    view = serializers.CharField()
    classification = serializers.CharField()
    columns = serializers.ListField(child=serializers.CharField())
    masked = serializers.ListField(child=serializers.CharField())
    rows = serializers.ListField(child=serializers.DictField())
    count = serializers.IntegerField()
    truncated = serializers.BooleanField()


class ActionWaitInput(serializers.Serializer):
    wait = serializers.IntegerField(min_value=0, max_value=30, required=False, default=0,
                                    help_text="Seconds to wait for a pending approval's decision (at most 30).")


class DecisionOutput(serializers.Serializer):
    decided_by = serializers.CharField(source="decided_by.username")
    group = serializers.CharField()
    verdict = serializers.CharField()
    comment = serializers.CharField()
    decided_at = serializers.DateTimeField()


class BudgetUseOutput(serializers.Serializer):
    budget_id = serializers.IntegerField(source="budget.id")
    target = serializers.CharField(source="budget.label")
    monthly_limit_micros = serializers.IntegerField(source="limit")
    spent_micros = serializers.IntegerField(source="spent")
    reserved_micros = serializers.IntegerField(source="reserved")
    remaining_micros = serializers.IntegerField(source="remaining")
    on_exceed = serializers.CharField(source="budget.on_exceed")


class ApprovalDetailOutput(serializers.Serializer):
    id = serializers.UUIDField(source="approval.id")
    kind = serializers.CharField(source="approval.kind")
    status = serializers.CharField(source="approval.status")
    group = serializers.CharField(source="approval.group")
    groups = serializers.ListField(child=serializers.CharField(), source="approval.groups")
    required_approvals = serializers.IntegerField(source="approval.required_approvals")
    reasons = serializers.ListField(child=serializers.CharField(), source="approval.reasons")
    purpose = serializers.CharField(source="approval.purpose", help_text="what the asker says it is for (a claim)")
    created_at = serializers.DateTimeField(source="approval.created_at")
    expires_at = serializers.DateTimeField(allow_null=True, source="approval.expires_at")
    decided_at = serializers.DateTimeField(allow_null=True, source="approval.decided_at")
    decided_by = serializers.CharField(allow_null=True, source="approval.decided_by.username", default=None)
    note = serializers.CharField(source="approval.note")
    agent = serializers.SerializerMethodField()
    action = serializers.SerializerMethodField()
    budget_increase = serializers.SerializerMethodField()
    budgets = BudgetUseOutput(many=True)
    data_view = serializers.SerializerMethodField()
    spend_this_month_micros = serializers.IntegerField(source="spend_this_month")
    denials_this_week = serializers.IntegerField()
    decisions = DecisionOutput(many=True)

    @extend_schema_field(serializers.DictField(allow_null=True))
    def get_agent(self, context) -> dict | None:
        agent = context.agent
        if agent is None:
            return None
        return {"id": str(agent.pk), "name": agent.name, "owner": agent.owner.get_username(), "team": agent.team.name,
                "status": agent.status}

    @extend_schema_field(serializers.DictField(allow_null=True))
    def get_action(self, context) -> dict | None:
        action = context.approval.action if context.approval.action_id else None
        if action is None:
            return None
        return {"id": str(action.pk), "action": action.action, "resource": action.resource,
                "estimated_cost_micros": action.estimated_cost_micros, "policies": action.policy_ids,
                "policy_version": action.policy_version, "delegation_chain": action.delegation_chain,
                "request_digest": action.request_digest, "correlation_id": action.correlation_id,
                "outcome": action.outcome}

    @extend_schema_field(serializers.DictField(allow_null=True))
    def get_budget_increase(self, context) -> dict | None:
        approval = context.approval
        if not approval.budget_id:
            return None
        return {"budget_id": approval.budget_id, "target": approval.budget.label,
                "monthly_limit_micros": approval.budget.monthly_limit_micros,
                "requested_limit_micros": approval.requested_limit_micros,
                "requested_by": (approval.requested_by.get_username() if approval.requested_by_id
                                 else f"agent:{approval.requested_by_agent.name}")}

    @extend_schema_field(serializers.DictField(allow_null=True))
    def get_data_view(self, context) -> dict | None:
        view = context.data_view
        return {"name": view.name, "classification": view.get_classification_display(), "team": view.team.name} if view else None


class DecideInput(serializers.Serializer):
    comment = serializers.CharField(max_length=2000, required=False, allow_blank=True, default="")


class IncreaseRequestInput(serializers.Serializer):
    monthly_limit_micros = StrictMicros(help_text="the monthly limit asked for, in micro-dollars")
    reason = serializers.CharField(max_length=1000, help_text="why: finance reads it before deciding")


class IncreaseRequestOutput(serializers.Serializer):
    id = serializers.UUIDField()
    status = serializers.CharField()
    group = serializers.CharField()
    requested_limit_micros = serializers.IntegerField()
    required_approvals = serializers.IntegerField()
    created_at = serializers.DateTimeField()
    expires_at = serializers.DateTimeField(allow_null=True)


class ApprovalSummaryOutput(serializers.Serializer):
    """A queue entry: what is asked, by whom, where it stands (GET /api/v1/approvals/{id}/ has the rest)."""

    id = serializers.UUIDField()
    kind = serializers.CharField()
    status = serializers.CharField()
    group = serializers.CharField()
    groups = serializers.ListField(child=serializers.CharField())
    required_approvals = serializers.IntegerField()
    reasons = serializers.ListField(child=serializers.CharField())
    purpose = serializers.CharField()
    agent = serializers.SerializerMethodField()
    action = serializers.SerializerMethodField()
    budget_increase = serializers.SerializerMethodField()
    created_at = serializers.DateTimeField()
    expires_at = serializers.DateTimeField(allow_null=True)
    decided_at = serializers.DateTimeField(allow_null=True)
    decided_by = serializers.CharField(allow_null=True, source="decided_by.username", default=None)
    note = serializers.CharField()

    def get_agent(self, approval) -> str | None:
        agent = approval.action.agent if approval.action_id else approval.requested_by_agent
        return agent.name if agent is not None else None

    @extend_schema_field(serializers.DictField(allow_null=True))
    def get_action(self, approval) -> dict | None:
        if not approval.action_id:
            return None
        action = approval.action
        return {"id": str(action.pk), "action": action.action, "resource": action.resource,
                "estimated_cost_micros": action.estimated_cost_micros, "outcome": action.outcome}

    @extend_schema_field(serializers.DictField(allow_null=True))
    def get_budget_increase(self, approval) -> dict | None:
        if not approval.budget_id:
            return None
        return {"budget_id": approval.budget_id, "target": approval.budget.label,
                "requested_limit_micros": approval.requested_limit_micros}
