"""Secrets never reach the audit log: by exact key name, and by their look wherever they are."""

from __future__ import annotations

import pytest

from audit.models import AuditEvent
from audit.redaction import REDACTED, redact, redact_text
from audit.services import audit_record
from audit.verify import verify
from tests.conftest import ask

SECRETS = {
    "warden agent key": "wdn_agent_AbCd1234_" + "x" * 40,
    "warden api token": "wdn_user_AbCd1234_" + "Y7" * 20,
    "openai": "sk-proj-" + "a1B2" * 12,
    "anthropic": "sk-ant-api03-" + "Zz9_" * 10,
    "aws": "AKIA" + "ABCDEFGHIJKLMNOP",
    "github": "ghp_" + "a" * 36,
    "slack": "xoxb-1234567890-abcdefghij",
    "google": "AIza" + "B" * 35,
    "stripe": "sk_live_" + "c" * 24,
    "jwt": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c",
}


@pytest.mark.parametrize("kind", SECRETS)
def test_a_secret_is_cut_out_of_any_text_that_stays_readable(kind):
    secret = SECRETS[kind]
    assert redact_text(f"calling with {secret} failed") == f"calling with {REDACTED} failed"


def test_bearer_and_basic_credentials_and_url_passwords():
    assert redact_text("Authorization: Bearer abcdefghijklmnopqrstuvwxyz0123") == f"Authorization: {REDACTED}"
    assert redact_text("Authorization: Basic dXNlcjpwYXNzd29yZDE=") == f"Authorization: {REDACTED}"
    assert redact_text("postgres://warden:hunter2@db/warden") == f"postgres://warden:{REDACTED}@db/warden"
    assert redact_text("-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----") == REDACTED


def test_ordinary_words_and_counts_are_left_alone():
    for text in ("the bearer of bad news", "a basic understanding", "skills-based routing", "task-force", "AKIA"):
        assert redact_text(text) == text
    payload = {"usage": {"input_tokens": 900, "output_tokens": 210, "max_output_tokens": 300, "cached_tokens": 5},
               "tokenizer": "cl100k", "token_count": 3}
    assert redact(payload) == payload


@pytest.mark.parametrize("key", ["accessToken", "X-Auth-Token", "db_password", "clientSecret", "privateKey",
                                 "x-amz-security-token", "apiKey", "SMTP_PASSWORD", "refresh_token", "Cookie"])
def test_secret_names_in_any_spelling(key):
    assert redact({key: "opaque-value"}) == {key: REDACTED}


@pytest.mark.parametrize("key", ["input_tokens", "output_tokens", "max_output_tokens", "cached_tokens", "token_count",
                                 "idempotency_key", "key", "password_hint", "secretary", "tokenizer"])
def test_counts_and_ordinary_names_are_kept(key):
    assert redact({key: 42}) == {key: 42}


def test_secret_query_parameters_in_urls():
    assert redact_text("https://api.x/v1?api_key=abc123&q=cats&token=zz#top") == \
        f"https://api.x/v1?api_key={REDACTED}&q=cats&token={REDACTED}#top"
    assert redact_text("input_tokens=9 tokens=5") == "input_tokens=9 tokens=5"


def test_exact_key_names_at_any_depth():
    payload = {"headers": [{"Authorization": "whatever it holds"}, {"X-Api-Key": "k"}],
               "db": {"password": "hunter2", "user": "warden"}, "Secret": "s", "api_key": "", "nested": {"token": 42}}
    assert redact(payload) == {"headers": [{"Authorization": REDACTED}, {"X-Api-Key": REDACTED}],
                               "db": {"password": REDACTED, "user": "warden"}, "Secret": REDACTED, "api_key": "",
                               "nested": {"token": REDACTED}}


def test_what_is_recorded_is_redacted_and_still_verifies(db, personas):
    event = audit_record(action="test.event", actor=personas["admin"], resource=f"https://x:{'p' * 8}@host/",
                         reasons=[f"key {SECRETS['openai']} leaked"],
                         payload={"body": {"prompt": f"use {SECRETS['aws']}"}, "usage": {"input_tokens": 7}})
    stored = AuditEvent.objects.get(pk=event.pk)
    assert SECRETS["openai"] not in str(stored.reasons) and SECRETS["aws"] not in str(stored.payload)
    assert stored.payload["usage"] == {"input_tokens": 7}
    assert stored.resource == f"https://x:{REDACTED}@host/"
    assert verify().ok


def test_token_counts_of_a_completion_reach_the_audit_log(bot, policy):
    policy("all", "permit(principal, action, resource);")
    action_id = ask(bot).json()["id"]
    bot.post(f"/api/v1/actions/{action_id}/complete/",
             {"status": "succeeded", "usage": {"input_tokens": 90, "output_tokens": 40}}, format="json")
    event = AuditEvent.objects.get(action="gate.complete")
    assert event.payload["usage"] == {"input_tokens": 90, "output_tokens": 40}
