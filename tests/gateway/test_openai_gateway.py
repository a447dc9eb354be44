"""The OpenAI-compatible gateway, driven by the official `openai` client against the real ASGI server, with a
local fake upstream that speaks the protocol (streaming included) and records every request it receives."""

from __future__ import annotations

import json
import threading
import time

import openai
import pytest
from django.db.models import Sum

from billing.models import BudgetPeriod, LedgerEntry
from governance.models import Action, Approval
from tests.browser import asgi_server
from tests.runtime.fake_openai import BROKEN, fake_openai

pytestmark = pytest.mark.django_db(transaction=True)

ESCALATE = '@escalate("finance")\nforbid(principal, action, resource == Model::"gpt-4o");'
HELLO = [{"role": "user", "content": "Say hello to the onboarding team"}]


@pytest.fixture(autouse=True)
def hosts(settings):
    settings.ALLOWED_HOSTS = ["127.0.0.1", "testserver"]


@pytest.fixture
def upstream(settings):
    with fake_openai() as fake:
        settings.WARDEN_LLM_UPSTREAMS = json.dumps({"*": {"base_url": fake.url, "api_key": "sk-upstream-secret",
                                                         "timeout": 1.5}})
        settings.WARDEN_GATEWAY_MAX_TOKENS = 64
        yield fake


@pytest.fixture
def gateway(upstream, make_agent, prices, permitted, personas):
    from agents.services import agent_key_issue

    agent = make_agent("outside-bot", allowed_models=["gpt-4o-mini", "gpt-4o"])
    _, secret = agent_key_issue(agent=agent, by=personas["admin"])
    with asgi_server() as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=secret, max_retries=0, timeout=20)
        client.agent, client.url = agent, url
        yield client


@pytest.fixture
def permitted(policy):
    return policy("all", "permit(principal, action, resource);")


def reserved_now() -> int:
    return BudgetPeriod.objects.aggregate(total=Sum("reserved_micros"))["total"] or 0


def test_an_allowed_call_goes_upstream_with_wardens_cap_and_key_and_is_charged_what_the_upstream_reports(
        gateway, upstream):
    raw = gateway.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=HELLO, max_tokens=50)
    reply = raw.parse()
    assert reply.choices[0].message.content == "fake answer to: Say hello to the onboarding team"
    action = Action.objects.get(pk=raw.headers["x-warden-action-id"])
    (call,) = upstream.calls
    assert call["action"] == str(action.pk) and call["authorization"] == "Bearer sk-upstream-secret"
    assert call["body"]["max_tokens"] == 50 and call["body"]["model"] == "gpt-4o-mini"
    assert (action.outcome, action.status) == ("allowed", "succeeded")
    assert action.usage == {"status": "succeeded", "usage": {"input_tokens": 21, "output_tokens": 7},
                            "usage_source": "provider"}
    entry = LedgerEntry.objects.get()
    assert (entry.input_tokens, entry.output_tokens, entry.cost_micros) == (21, 7, action.actual_cost_micros)
    assert reserved_now() == 0

    gateway.chat.completions.create(model="gpt-4o-mini", messages=HELLO)  # no max_tokens: Warden's cap
    assert upstream.calls[1]["body"]["max_tokens"] == 64
    huge = gateway.chat.completions.create(model="gpt-4o-mini", messages=HELLO, max_tokens=10**9)
    assert huge.choices and upstream.calls[2]["body"]["max_tokens"] == 32_768


def test_a_denial_is_an_openai_error_and_nothing_reaches_the_upstream(gateway, upstream, policy):
    policy("no-big-model", 'forbid(principal, action, resource == Model::"gpt-4o");')
    with pytest.raises(openai.PermissionDeniedError) as raised:
        gateway.chat.completions.create(model="gpt-4o", messages=HELLO, max_tokens=20)
    error = raised.value.body
    assert raised.value.status_code == 403 and error["type"] == "warden_denied"
    assert error["reasons"] == ["forbidden by policy no-big-model"]
    assert Action.objects.get(pk=error["action_id"]).outcome == "denied"
    assert upstream.calls == []


def test_a_call_over_budget_is_denied_before_the_upstream_sees_it(gateway, upstream, personas):
    from billing.services import budget_create

    budget_create(scope="agent", agent=gateway.agent, monthly_limit_micros=1, by=personas["finance"])
    with pytest.raises(openai.PermissionDeniedError) as raised:
        gateway.chat.completions.create(model="gpt-4o-mini", messages=HELLO, max_tokens=20)
    assert "budget" in raised.value.body["message"]
    assert upstream.calls == [] and not LedgerEntry.objects.exists()


def test_an_escalated_call_waits_for_the_person_and_then_runs(gateway, upstream, policy, personas, settings):
    from governance.approvals import approval_decide

    policy("gpt4o-needs-finance", ESCALATE)
    settings.WARDEN_GATEWAY_APPROVAL_WAIT = 15
    answers = []
    caller = threading.Thread(target=lambda: answers.append(
        gateway.chat.completions.create(model="gpt-4o", messages=HELLO, max_tokens=20)))
    caller.start()
    deadline = time.monotonic() + 10
    while not Approval.objects.filter(status="pending").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert upstream.calls == []  # waiting: nothing went upstream
    approval_decide(approval=Approval.objects.get(), by=personas["finance"], verdict="approve", comment="fine")
    caller.join(15)
    assert answers and answers[0].choices[0].message.content.startswith("fake answer")
    assert len(upstream.calls) == 1 and Action.objects.get().status == "succeeded"


def test_a_call_still_waiting_is_a_409_and_the_same_idempotency_key_runs_it_once_approved(
        gateway, upstream, policy, personas, settings):
    from governance.approvals import approval_decide

    policy("gpt4o-needs-finance", ESCALATE)
    settings.WARDEN_GATEWAY_APPROVAL_WAIT = 0
    key = {"Idempotency-Key": "report-2026-11-23"}
    with pytest.raises(openai.ConflictError) as raised:
        gateway.chat.completions.create(model="gpt-4o", messages=HELLO, max_tokens=20, extra_headers=key)
    assert raised.value.body["type"] == "warden_pending_approval"
    action_id = raised.value.body["action_id"]
    approval_decide(approval=Approval.objects.get(), by=personas["finance"], verdict="approve", comment="ok")
    raw = gateway.chat.completions.with_raw_response.create(model="gpt-4o", messages=HELLO, max_tokens=20,
                                                            extra_headers=key)
    assert raw.headers["x-warden-action-id"] == action_id and len(upstream.calls) == 1
    with pytest.raises(openai.ConflictError):  # the same key again: that action is spent
        gateway.chat.completions.create(model="gpt-4o", messages=HELLO, max_tokens=20, extra_headers=key)
    with pytest.raises(openai.ConflictError) as other:  # the same key with other content: another request
        gateway.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "Something else!"}],
                                        max_tokens=20, extra_headers=key)
    assert other.value.body["type"] == "idempotency_mismatch"
    assert len(upstream.calls) == 1


@pytest.mark.parametrize("status,error", [(429, openai.RateLimitError), (500, openai.InternalServerError)])
def test_upstream_errors_come_back_as_the_upstream_said_and_release_the_reservation(gateway, upstream, status, error):
    upstream.reply(status, {"error": {"message": "upstream says no", "type": "server_error"}})
    with pytest.raises(error) as raised:
        gateway.chat.completions.create(model="gpt-4o-mini", messages=HELLO, max_tokens=20)
    assert raised.value.status_code == status and raised.value.body["message"] == "upstream says no"
    action = Action.objects.get()
    assert action.status == "failed" and action.actual_cost_micros == 0 and reserved_now() == 0


def test_an_upstream_that_does_not_answer_in_time_is_a_504_charged_what_was_reserved(gateway, upstream):
    """It was asked and may bill for the work: the reservation is charged (Warden's count), never dropped."""
    upstream.reply(200, None, delay=3)
    with pytest.raises(openai.InternalServerError) as raised:
        gateway.chat.completions.create(model="gpt-4o-mini", messages=HELLO, max_tokens=20)
    assert raised.value.status_code == 504 and raised.value.body["type"] == "upstream_timeout"
    action = Action.objects.get()
    assert action.status == "failed" and reserved_now() == 0
    assert action.usage["usage"] == {"input_tokens": action.context["input_tokens"], "output_tokens": 20}
    assert action.usage["usage_source"] == "warden" and action.actual_cost_micros == action.estimated_cost_micros


def test_a_stream_is_forwarded_and_charged_from_its_usage_chunk(gateway, upstream):
    chunks = list(gateway.chat.completions.create(model="gpt-4o-mini", messages=HELLO, max_tokens=20, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "streamed answer" and chunks[-1].usage.completion_tokens == 9
    assert upstream.calls[0]["body"]["stream_options"] == {"include_usage": True}
    action = Action.objects.get()
    assert action.usage["usage"] == {"input_tokens": 30, "output_tokens": 9}
    assert action.usage["usage_source"] == "provider" and reserved_now() == 0


def test_a_stream_without_usage_is_charged_what_warden_counted(gateway, upstream):
    upstream.stream_usage = False
    list(gateway.chat.completions.create(model="gpt-4o-mini", messages=HELLO, max_tokens=20, stream=True))
    action = Action.objects.get()
    assert action.usage["usage_source"] == "warden" and action.status == "succeeded"
    assert action.usage["usage"]["output_tokens"] == 5  # "streamed answer": 15 bytes, a token per 3
    assert action.usage["usage"]["input_tokens"] == action.context["input_tokens"]


def test_a_broken_stream_settles_what_was_streamed(gateway, upstream):
    upstream.reply(200, BROKEN)
    with pytest.raises(openai.APIError) as raised:
        list(gateway.chat.completions.create(model="gpt-4o-mini", messages=HELLO, max_tokens=20, stream=True))
    assert "broke off the stream" in raised.value.message
    action = Action.objects.get()
    assert action.status == "failed" and action.usage["usage"]["output_tokens"] == 3  # "streamed ": 9 bytes
    assert reserved_now() == 0 and LedgerEntry.objects.get().cost_micros == action.actual_cost_micros > 0


def test_models_lists_what_this_agent_may_call_and_a_bad_key_is_refused(gateway, upstream):
    assert sorted(model.id for model in gateway.models.list()) == ["gpt-4o", "gpt-4o-mini"]
    stranger = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="wk_not-a-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        stranger.models.list()
    assert upstream.calls == []


def test_thirty_two_clients_streaming_against_a_small_budget_never_overspend(gateway, upstream, personas):
    from concurrent.futures import ThreadPoolExecutor

    from billing.services import budget_create

    upstream.delay = 0.2  # streams overlap
    probe = gateway.chat.completions.create(model="gpt-4o-mini", messages=HELLO, max_tokens=20)
    assert probe.choices
    one = Action.objects.get().reserved_micros or Action.objects.get().estimated_cost_micros
    limit = one * 6 + one // 2 + LedgerEntry.objects.aggregate(total=Sum("cost_micros"))["total"]  # ~6 at once
    budget = budget_create(scope="agent", agent=gateway.agent, monthly_limit_micros=limit, by=personas["finance"])
    gateway.chat.completions.create(model="gpt-4o-mini", messages=HELLO, max_tokens=20)  # the period is open
    spent_before = BudgetPeriod.objects.get(budget=budget).spent_micros
    calls_before = len(upstream.calls)

    def call(_):
        client = openai.OpenAI(base_url=str(gateway.base_url), api_key=gateway.api_key, max_retries=0, timeout=30)
        try:
            return "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
                model="gpt-4o-mini", messages=HELLO, max_tokens=20, stream=True) if c.choices)
        except openai.PermissionDeniedError:
            return "denied"

    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(call, range(32)))
    allowed = [r for r in results if r != "denied"]
    # The budget held: some were refused, what was allowed is what went upstream, and the money spent (each
    # stream settled below what it reserved, so a finished one frees room for a later one) stays in the limit.
    assert allowed and all(r == "streamed answer" for r in allowed) and "denied" in results
    assert len(upstream.calls) == calls_before + len(allowed)  # nothing the gate did not allow went upstream
    period = BudgetPeriod.objects.get(budget=budget)
    assert period.spent_micros <= budget.monthly_limit_micros and period.reserved_micros == 0
    streamed = Action.objects.filter(agent=gateway.agent, outcome="allowed", context__gateway__stream=True)
    assert streamed.count() == len(allowed)
    assert period.spent_micros == spent_before + sum(a.actual_cost_micros for a in streamed)
    cheapest = min(a.actual_cost_micros for a in streamed)
    assert len(allowed) <= (limit - spent_before) // cheapest  # never more calls than the money pays for


def test_a_model_routed_to_the_simulated_provider_answers_in_the_protocol_and_says_so(gateway, settings):
    settings.WARDEN_LLM_UPSTREAMS = json.dumps({"*": "simulated"})
    settings.WARDEN_SIMULATED_LATENCY_MS = 0
    reply = gateway.chat.completions.create(model="gpt-4o-mini", messages=HELLO, max_tokens=40)
    assert reply.choices[0].message.content and reply.system_fingerprint == "simulated"
    chunks = list(gateway.chat.completions.create(model="gpt-4o-mini", messages=HELLO, max_tokens=40, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) and chunks[-1].usage
    assert set(Action.objects.values_list("usage__usage_source", flat=True)) == {"simulated"}



@pytest.mark.parametrize("extra,says", [
    ({"prediction": {"type": "content", "content": "x" * 100}}, "does not forward prediction"),
    ({"n": 3}, "one choice per request"),
    ({"n": True}, "one choice per request"),
    ({"modalities": ["audio"]}, "does not forward modalities"),
    ({"stream": True, "stream_options": "x"}, "stream_options: an object"),
])
def test_fields_that_would_make_the_upstream_do_more_than_was_judged_are_refused(gateway, upstream, extra, says):
    with pytest.raises(openai.BadRequestError) as raised:
        gateway.chat.completions.create(model="gpt-4o-mini", messages=HELLO, max_tokens=20, extra_body=extra)
    assert says in raised.value.body["message"]
    assert upstream.calls == [] and not Action.objects.exists()


def test_content_that_cannot_be_judged_or_sent_is_refused_before_the_gate(gateway, upstream):
    image = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x.example/a.png"}}]}]
    with pytest.raises(openai.BadRequestError) as raised:
        gateway.chat.completions.create(model="gpt-4o-mini", messages=image, max_tokens=20)
    assert "only text content" in raised.value.body["message"]
    import httpx

    bodies = [b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "\\ud800"}]}',
              b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}], "temperature": NaN}',
              b"not json", b"[]", b'{"model": 5, "messages": []}']
    for body in bodies:
        answer = httpx.post(f"{gateway.url}/v1/chat/completions", content=body,
                            headers={"Authorization": f"Bearer {gateway.api_key}", "Content-Type": "application/json"})
        assert answer.status_code == 400 and answer.json()["error"]["type"] == "invalid_request_error", body
    assert upstream.calls == [] and not Action.objects.exists()


def test_two_requests_with_one_key_at_the_same_moment_go_upstream_once(gateway, upstream):
    from concurrent.futures import ThreadPoolExecutor

    upstream.delay = 0.3
    key = {"Idempotency-Key": "twice-at-once"}

    def call(_):
        try:
            return gateway.chat.completions.create(model="gpt-4o-mini", messages=HELLO, max_tokens=20,
                                                   extra_headers=key).choices[0].message.content
        except openai.ConflictError as error:
            return error.body["type"]

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(call, range(4)))
    assert len(upstream.calls) == 1 and Action.objects.count() == 1
    assert sum(r.startswith("fake answer") for r in results) == 1 and results.count("warden_action_closed") == 3


def test_an_agent_cannot_settle_a_gateway_action_over_the_rest_api(gateway, upstream):
    from rest_framework.test import APIClient

    upstream.delay = 0.5
    raw = gateway.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=HELLO, max_tokens=20)
    action_id = raw.headers["x-warden-action-id"]
    rest = APIClient()
    rest.credentials(HTTP_AUTHORIZATION=f"Bearer {gateway.api_key}")
    claimed = rest.post(f"/api/v1/actions/{action_id}/complete/", {"status": "failed"}, format="json")
    assert claimed.status_code == 409
    taken = rest.post("/api/v1/actions/", {"action": "llm.call", "resource": "gpt-4o-mini",
                                            "idempotency_key": "gw:twice-at-once",
                                            "context": {"input_tokens": 1, "max_output_tokens": 1}}, format="json")
    assert taken.status_code == 400 and "reserved for Warden's runtime and gateway" in taken.content.decode()


def test_embeddings_go_through_the_gate_and_are_charged_the_upstreams_count(gateway, upstream, policy):
    raw = gateway.embeddings.with_raw_response.create(model="gpt-4o-mini", input=["first text", "second text"])
    vectors = raw.parse()
    assert [item.embedding for item in vectors.data] == [[0.1, 0.2, 0.3]] * 2
    action = Action.objects.get(pk=raw.headers["x-warden-action-id"])
    assert upstream.calls[0]["path"] == "/v1/embeddings" and upstream.calls[0]["action"] == str(action.pk)
    assert action.context["max_output_tokens"] == 0
    assert action.usage["usage"] == {"input_tokens": 10, "output_tokens": 0} and reserved_now() == 0
    policy("no-big-model", 'forbid(principal, action, resource == Model::"gpt-4o");')
    with pytest.raises(openai.PermissionDeniedError):
        gateway.embeddings.create(model="gpt-4o", input="x")
    with pytest.raises(openai.BadRequestError):
        gateway.embeddings.create(model="gpt-4o-mini", input=[])
    assert len(upstream.calls) == 1


def test_bad_keys_are_throttled_per_address_as_on_the_rest_api(gateway, upstream, monkeypatch):
    from governance.api.throttles import _Counted

    start = (time.time() // 60) * 60 + 1  # one fixed window, whatever the clock does meanwhile
    monkeypatch.setattr(_Counted, "timer", lambda self: start)
    stranger = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="wdn_agent_AAAAAAAA_" + "B" * 40, max_retries=0)
    for _ in range(20):
        with pytest.raises(openai.AuthenticationError):
            stranger.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    with pytest.raises(openai.RateLimitError) as raised:
        stranger.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    assert raised.value.body["type"] == "rate_limit_exceeded"
    assert gateway.chat.completions.create(model="gpt-4o-mini", messages=HELLO).choices  # a good key still works
    assert len(upstream.calls) == 1


def test_a_calls_decision_and_completion_are_one_trace_under_the_callers_request_id(gateway, upstream):
    from audit.models import AuditEvent

    raw = gateway.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=HELLO, max_tokens=20,
                                                            extra_headers={"X-Request-ID": "onboarding-0042"})
    assert raw.headers["x-request-id"] == "onboarding-0042"
    action = Action.objects.get(pk=raw.headers["x-warden-action-id"])
    assert action.correlation_id == "onboarding-0042"
    assert list(AuditEvent.objects.filter(correlation_id="onboarding-0042").values_list("action", flat=True)) == [
        "gate.llm.call", "gate.complete"]
