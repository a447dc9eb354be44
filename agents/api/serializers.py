"""Explicit input and output shapes of the registry API."""

from __future__ import annotations

import datetime as dt

from django.contrib.auth import get_user_model
from django.utils import timezone
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from governance.scopes import SCOPES
from governance.selectors import agent_roles

from ..models import AgentKey, Clearance, Delegation, Team
from ..selectors import key_state

CLEARANCE_NAMES = {label: value for value, label in Clearance.choices}


class ClearanceField(serializers.ChoiceField):
    def __init__(self, **kwargs):
        super().__init__(choices=list(CLEARANCE_NAMES), **kwargs)

    def to_internal_value(self, data):
        return CLEARANCE_NAMES[super().to_internal_value(data)]

    def to_representation(self, value):
        return Clearance(value).label


class UsernameField(serializers.SlugRelatedField):
    def __init__(self, **kwargs):
        super().__init__(slug_field=get_user_model().USERNAME_FIELD, queryset=get_user_model().objects.all(), **kwargs)


class NameList(serializers.ListField):
    def __init__(self, **kwargs):
        super().__init__(child=serializers.CharField(max_length=100), max_length=200, **kwargs)


class AgentCreateInput(serializers.Serializer):
    name = serializers.SlugField(max_length=64)
    description = serializers.CharField(required=False, allow_blank=True, max_length=2000, default="")
    owner = UsernameField()
    team = serializers.SlugRelatedField(slug_field="name", queryset=Team.objects.all())
    roles = serializers.ListField(child=serializers.SlugField(max_length=64), required=False, default=list, max_length=50)
    allowed_models = NameList(required=False, default=list)
    allowed_tools = NameList(required=False, default=list)
    clearance = ClearanceField(required=False, default=Clearance.INTERNAL)
    activate = serializers.BooleanField(required=False, default=True)
    program = serializers.CharField(required=False, allow_blank=True, max_length=200, default="",
                                    help_text="Dotted path of the program Warden's workers run for it "
                                              "(WARDEN_AGENT_PROGRAMS); blank if it runs elsewhere")


class AgentUpdateInput(serializers.Serializer):
    description = serializers.CharField(required=False, allow_blank=True, max_length=2000)
    owner = UsernameField(required=False)
    team = serializers.SlugRelatedField(slug_field="name", queryset=Team.objects.all(), required=False)
    allowed_models = NameList(required=False)
    allowed_tools = NameList(required=False)
    clearance = ClearanceField(required=False)
    program = serializers.CharField(required=False, allow_blank=True, max_length=200)


class AgentOutput(serializers.Serializer):
    id = serializers.UUIDField()
    name = serializers.CharField()
    description = serializers.CharField()
    owner = serializers.CharField(source="owner.username")
    team = serializers.CharField(source="team.name")
    status = serializers.CharField()
    status_reason = serializers.CharField()
    status_changed_at = serializers.DateTimeField(allow_null=True)
    roles = serializers.SerializerMethodField()
    allowed_models = serializers.ListField(child=serializers.CharField())
    allowed_tools = serializers.ListField(child=serializers.CharField())
    clearance = ClearanceField()
    program = serializers.CharField()
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()
    last_seen_at = serializers.DateTimeField(allow_null=True)

    def get_roles(self, agent) -> list[str]:
        grants = getattr(agent, "live_grants", None)
        if grants is None:
            return sorted(agent_roles(agent.pk).names)
        return sorted(grant.role.name for grant in grants)


class ReasonInput(serializers.Serializer):
    reason = serializers.CharField(max_length=500, allow_blank=True, required=False, default="")


def _future(value: dt.datetime | None) -> dt.datetime | None:
    if value is not None and value <= timezone.now():
        raise serializers.ValidationError("The expiry must be in the future.")
    return value


class KeyIssueInput(serializers.Serializer):
    name = serializers.CharField(max_length=100, required=False, allow_blank=True, default="")
    expires_at = serializers.DateTimeField(required=False, allow_null=True, default=None)
    expires_in_days = serializers.IntegerField(required=False, min_value=1, max_value=3650)

    def validate(self, data):
        if data.get("expires_in_days") and data.get("expires_at"):
            raise serializers.ValidationError("Give expires_at or expires_in_days, not both.")
        if data.get("expires_in_days"):
            data["expires_at"] = timezone.now() + dt.timedelta(days=data.pop("expires_in_days"))
        data["expires_at"] = _future(data.get("expires_at"))
        return data


class KeyRotateInput(serializers.Serializer):
    grace_seconds = serializers.IntegerField(required=False, default=0, min_value=0, max_value=7 * 24 * 3600)


class KeyOutput(serializers.Serializer):
    id = serializers.UUIDField()
    name = serializers.CharField()
    prefix = serializers.CharField(source="display_prefix")
    state = serializers.SerializerMethodField()
    created_at = serializers.DateTimeField()
    expires_at = serializers.DateTimeField(allow_null=True)
    revoked_at = serializers.DateTimeField(allow_null=True)
    last_used_at = serializers.DateTimeField(allow_null=True)

    def get_state(self, key: AgentKey) -> str:
        return key_state(key)


class KeyIssuedOutput(KeyOutput):
    secret = serializers.CharField(help_text="Shown once; store it now. Warden keeps only a hash.")


class DelegationInput(serializers.Serializer):
    scopes = serializers.ListField(
        child=serializers.ChoiceField(choices=list(SCOPES)), min_length=1, max_length=len(SCOPES)
    )
    expires_at = serializers.DateTimeField(required=False)
    expires_in_hours = serializers.IntegerField(required=False, min_value=1, max_value=90 * 24)
    max_depth = serializers.IntegerField(required=False, min_value=1, max_value=10)
    purpose = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")

    def validate(self, data):
        if ("expires_at" in data) == ("expires_in_hours" in data):
            raise serializers.ValidationError("Give exactly one of expires_at or expires_in_hours.")
        if "expires_in_hours" in data:
            data["expires_at"] = timezone.now() + dt.timedelta(hours=data.pop("expires_in_hours"))
        data["expires_at"] = _future(data["expires_at"])
        return data


class AgentDelegationInput(DelegationInput):
    delegate = serializers.SlugField(max_length=64, help_text="Name of the agent that receives the scopes")
    on_behalf_of = serializers.UUIDField(required=False, help_text="Pass on a delegation this agent received")
    idempotency_key = serializers.CharField(max_length=128, required=False)


class DelegationOutput(serializers.Serializer):
    id = serializers.UUIDField()
    parent = serializers.UUIDField(allow_null=True, source="parent_id")
    delegator = serializers.SerializerMethodField()
    delegate = serializers.CharField(source="delegate.name")
    delegate_id = serializers.UUIDField()
    scopes = serializers.ListField(child=serializers.CharField())
    depth = serializers.IntegerField()
    max_depth = serializers.IntegerField()
    purpose = serializers.CharField()
    created_at = serializers.DateTimeField()
    expires_at = serializers.DateTimeField()
    revoked_at = serializers.DateTimeField(allow_null=True)

    def get_delegator(self, delegation: Delegation) -> dict:
        if delegation.delegator_user_id:
            return {"type": "user", "name": delegation.delegator_user.get_username()}
        return {"type": "agent", "name": delegation.delegator_agent.name, "id": str(delegation.delegator_agent_id)}


class AgentSelfOutput(serializers.Serializer):
    id = serializers.UUIDField(source="agent.id")
    name = serializers.CharField(source="agent.name")
    status = serializers.CharField(source="agent.status")
    team = serializers.CharField(source="agent.team.name")
    key_id = serializers.UUIDField(source="key.id")
    key_expires_at = serializers.DateTimeField(allow_null=True, source="key.expires_at")


# --- runs ------------------------------------------------------------------------------------


class RunStartInput(serializers.Serializer):
    objective = serializers.CharField(max_length=4000, help_text="What the run should achieve")


class RunCancelInput(serializers.Serializer):
    reason = serializers.CharField(max_length=500, allow_blank=True, required=False, default="")


class RunOutput(serializers.Serializer):
    id = serializers.UUIDField()
    agent = serializers.CharField(source="agent.name")
    agent_id = serializers.UUIDField()
    program = serializers.CharField()
    objective = serializers.CharField()
    status = serializers.CharField()
    source = serializers.CharField()
    started_by = serializers.SerializerMethodField()
    correlation_id = serializers.CharField()
    cost_micros = serializers.IntegerField(help_text="settled so far, at Warden's prices")
    steps_done = serializers.IntegerField()
    error = serializers.CharField()
    created_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)

    def get_started_by(self, run) -> str | None:
        if run.started_by_id:
            return run.started_by.get_username()
        return "schedule" if run.schedule_id else None


class RunStepOutput(serializers.Serializer):
    index = serializers.IntegerField()
    kind = serializers.CharField()
    name = serializers.CharField(help_text="the model, tool, data view or agent")
    status = serializers.CharField()
    provider = serializers.CharField(help_text="'simulated' for the offline provider and demo tools")
    input_summary = serializers.CharField()
    output_summary = serializers.CharField()
    error = serializers.CharField()
    reasons = serializers.ListField(child=serializers.CharField())
    input_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()
    cost_micros = serializers.IntegerField()
    retries = serializers.IntegerField()
    duration_ms = serializers.IntegerField()
    action_id = serializers.UUIDField(allow_null=True)
    attempts = serializers.ListField(child=serializers.DictField())
    started_at = serializers.DateTimeField()
    finished_at = serializers.DateTimeField(allow_null=True)


class RunDetailOutput(RunOutput):
    plan = serializers.JSONField()
    result = serializers.JSONField()
    steps = RunStepOutput(many=True)


# --- MCP servers behind the gateway ------------------------------------------------------------------

CLEARANCE_LABELS = [label for _, label in Clearance.choices]


class McpToolInput(serializers.Serializer):
    """A tool to register, or what to change of one (what is left out stays as it is)."""

    name = serializers.CharField(max_length=64)
    description = serializers.CharField(max_length=2000, required=False, allow_blank=True)
    input_schema = serializers.JSONField(required=False,
                                         help_text='The JSON Schema of its arguments ({"type": "object", ...}).')
    price_micros = serializers.IntegerField(min_value=0, max_value=10**9, required=False,
                                            help_text="Warden's price per call in micro-dollars: an admin gives a new "
                                                      "tool its first price; changing it is finance's.")
    clearance = serializers.ChoiceField(choices=CLEARANCE_LABELS, required=False,
                                        help_text="The most sensitive data it may be sent (default: internal).")
    returns = serializers.ChoiceField(choices=CLEARANCE_LABELS, required=False,
                                      help_text="How sensitive what it returns is: a caller carries that afterwards.")
    active = serializers.BooleanField(required=False)


class McpServerInput(serializers.Serializer):
    name = serializers.RegexField(r"^[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?$", max_length=32)
    url = serializers.CharField(max_length=500, help_text="The server's Streamable HTTP endpoint.")
    description = serializers.CharField(max_length=2000, required=False, allow_blank=True, default="")
    timeout_seconds = serializers.IntegerField(min_value=1, max_value=600, required=False, default=30)
    tools = McpToolInput(many=True, required=False, default=list, max_length=200)


class McpServerUpdateInput(serializers.Serializer):
    url = serializers.CharField(max_length=500, required=False)
    description = serializers.CharField(max_length=2000, required=False, allow_blank=True)
    active = serializers.BooleanField(required=False)
    timeout_seconds = serializers.IntegerField(min_value=1, max_value=600, required=False)
    tools = McpToolInput(many=True, required=False, max_length=200,
                         help_text="Tools to register or change (by name); tools not named are left as they are.")


class McpToolOutput(serializers.Serializer):
    name = serializers.CharField(source="tool.name")
    resource = serializers.CharField(help_text="What the gate, prices and an agent's allowed tools call it.")
    description = serializers.CharField(source="tool.description")
    input_schema = serializers.JSONField(source="tool.input_schema")
    price_micros = serializers.IntegerField(allow_null=True)
    clearance = serializers.SerializerMethodField()
    returns = serializers.CharField(source="tool.get_returns_display")
    active = serializers.BooleanField(source="tool.active")

    def get_clearance(self, view) -> str:
        return Clearance(view.clearance).label


class McpServerOutput(serializers.Serializer):
    name = serializers.CharField()
    url = serializers.CharField()
    gateway_path = serializers.SerializerMethodField(help_text="Where agents point their MCP client (with their key).")
    description = serializers.CharField()
    active = serializers.BooleanField()
    timeout_seconds = serializers.IntegerField()
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()
    tools = serializers.SerializerMethodField()

    def get_gateway_path(self, server) -> str:
        return f"/mcp/{server.name}/"

    @extend_schema_field(McpToolOutput(many=True))
    def get_tools(self, server) -> list:
        from ..gateway.registry import tool_views

        return McpToolOutput(tool_views(server), many=True).data
