"""The gate's answer over the API (`action_output`) is exactly what the ActionOutput serializer, the
OpenAPI schema's description of it, gives: for every kind of action, fresh from the gate and read back."""

from __future__ import annotations

import pytest

from governance.api.serializers import ActionOutput, action_output
from governance.gate import complete_action, request_action
from governance.models import Action

SMALL = {"input_tokens": 100, "max_output_tokens": 50}


@pytest.mark.django_db(transaction=True)
def test_the_fast_answer_is_the_serializers_answer(make_agent, policy, prices, personas):
    policy("all", "permit(principal, action, resource);")
    policy("big-spend", '@escalate("finance")\nforbid(principal, action == Action::"llm.call", resource) '
                        'when { context.estimated_cost_micros > 100000 };')
    agent = make_agent("speaker", allowed_models=["gpt-4o-mini", "gpt-4o"], allowed_tools=["search"])
    made = [
        request_action(agent=agent, action="llm.call", resource="gpt-4o-mini", context=SMALL),  # allowed
        request_action(agent=agent, action="llm.call", resource="gpt-4o",  # escalated: an approval
                       context={"input_tokens": 100_000, "max_output_tokens": 10_000}),
        request_action(agent=agent, action="llm.call", resource="not-allowed", context=SMALL),  # denied
        request_action(agent=agent, action="tool.call", resource="search",
                       context={"classification": "restricted"}, idempotency_key="out-1"),  # a note in reasons
    ]
    completed = complete_action(action=Action.objects.get(pk=made[0].pk), status="succeeded",
                                usage={"input_tokens": 90, "output_tokens": 40}, usage_source="agent")
    assert [a.outcome for a in made] == ["allowed", "pending_approval", "denied", "allowed"]
    assert made[1].approval is not None
    read_back = list(Action.objects.select_related("agent").filter(agent=agent))
    for action in [*made, completed, *read_back]:
        assert action_output(action) == ActionOutput(action).data
    assert action_output(made[1])["approval"]["group"] == "finance"
    assert action_output(completed)["usage"]["usage_source"] == "agent"
