"""Whatever JSON anyone hands to Warden, every audit chain still verifies (property-based, Hypothesis)."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from audit.services import audit_record
from audit.verify import verify
from governance.payloads import canonical_form, check_json, json_problem

# Everything JSON can spell and Python can hold: floats of every kind, integers far past 64 bits,
# any code point (NUL and lone surrogates included), nesting.
leaves = (st.none() | st.booleans() | st.integers(min_value=-(2**80), max_value=2**80)
          | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12))
json_values = st.recursive(
    leaves,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=24,
)
# Deeper than any bound: a value nested `depth` times.
deep = st.integers(min_value=1, max_value=60).map(lambda depth: json.loads("[" * depth + "]" * depth))

SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@SETTINGS
@given(payload=json_values | deep, text=st.text(max_size=40))
def test_audit_record_takes_anything_and_the_chain_still_verifies(db, personas, payload, text):
    audit_record(action="property.test", actor=personas["admin"], resource=text, reasons=[text, payload],
                 payload={"value": payload, text: text})
    result = verify()
    assert result.ok, result.problems


# Keys the gate reads (so odd values reach the code that reads them), and any others.
context_keys = st.sampled_from(["classification", "estimated_cost_micros", "input_tokens", "max_output_tokens",
                                "scopes", "host"]) | st.text(max_size=6)
usage_keys = st.sampled_from(["model", "input_tokens", "output_tokens", "cached_tokens", "reasoning_tokens",
                              "calls"]) | st.text(max_size=6)


@SETTINGS
@given(context=st.dictionaries(context_keys, json_values, max_size=5),
       usage=json_values | st.dictionaries(usage_keys, json_values, max_size=4),
       key=st.text(min_size=1, max_size=20))
def test_anything_an_agent_sends_is_judged_or_refused_and_the_chain_still_verifies(bot, policy_all, context, usage,
                                                                                 key):
    response = post(bot, "/api/v1/actions/", {"action": "llm.call", "resource": "gpt-4o-mini", "idempotency_key": key,
                                              "context": {"input_tokens": 10, "max_output_tokens": 10, **context}})
    assert response.status_code in (201, 400, 409), response.content
    if response.status_code == 201 and response.json()["outcome"] == "allowed":
        done = post(bot, f"/api/v1/actions/{response.json()['id']}/complete/", {"status": "succeeded", "usage": usage})
        assert done.status_code in (200, 400, 409), done.content
    result = verify()
    assert result.ok, result.problems


def post(client, path: str, body):
    """As any client may send it: NaN, Infinity and lone surrogates spelled as JSON readers accept them."""
    return client.generic("POST", path, json.dumps(body), content_type="application/json")


@pytest.fixture
def policy_all(policy):
    policy("all", "permit(principal, action, resource);")


@SETTINGS
@given(value=json_values | deep)
def test_the_canonical_form_is_a_fixed_point_the_edge_accepts(value):
    once = canonical_form(value)
    assert canonical_form(once) == once
    assert json_problem(once, path="value", max_depth=40, floats=False) is None
    check_json(once, field="value", max_depth=40, max_bytes=None)  # what audit_record stores, the edge accepts


@SETTINGS
@given(payload=json_values, text=st.text(max_size=40), seq=st.integers(min_value=1, max_value=2**62),
       prev=st.text(alphabet="0123456789abcdef", min_size=64, max_size=64))
def test_the_hot_paths_pieces_put_together_are_the_canonical_bytes(payload, text, seq, prev):
    """What the gate's hot path sends PostgreSQL to hash (governance/hotpath.py): the canonical bytes cut
    around the link, whatever the event holds (a reason spelling "seq":0, a payload key prev_hash ...)."""
    from audit.services import Actor, audit_fields, canonical, canonical_parts

    fields = audit_fields(chain="agent:x", seq=seq, prev_hash=prev, action="gate.llm.call",
                          actor=Actor("agent", "x", text), resource=text,
                          reasons=[text, '"seq":0', '"prev_hash":"\x00"', payload],
                          payload={"value": payload, text: text, "seq": 0, "prev_hash": "\x00",
                                   "occurred_at": "\x00"})
    head, after_time, after_prev, tail = canonical_parts(fields)
    at = fields["occurred_at"].isoformat(timespec="microseconds")  # audit_fields stamps it in UTC
    assert (head + at.encode() + after_time + prev.encode() + after_prev + str(seq).encode() + tail
            == canonical(fields))
