"""What never reaches the audit log: secrets, by the name of their key or by their look.

- A value whose key is exactly a secret's name (`password`, `api_key`,
  `Authorization`, ...; case and `-`/`_` do not matter) is replaced whole.
  Exact names, not substrings: `input_tokens` and `max_output_tokens` are
  counts, never redacted.
- Anywhere in any string, at any depth, whatever its key: Warden's own
  credentials, bearer and basic credentials, the common shapes of provider
  keys (OpenAI/Anthropic, AWS, GitHub, GitLab, Slack, Google, Stripe), JSON
  web tokens, PEM private keys and passwords in URLs are cut out of the text,
  which otherwise stays readable.
"""

from __future__ import annotations

import re

REDACTED = "[redacted]"

SECRET_KEYS = frozenset({
    "password", "passwd", "passphrase", "secret", "client_secret", "secret_key", "secret_access_key",
    "token", "access_token", "refresh_token", "id_token", "session_token", "auth_token", "api_token",
    "bearer_token", "api_key", "apikey", "x_api_key", "private_key", "authorization",
    "proxy_authorization", "cookie", "set_cookie", "credentials", "client_key",
})

SECRET_SHAPES = re.compile("|".join(f"(?:{shape})" for shape in (
    r"\bwdn_(?:agent|user)_[A-Za-z0-9]{8}_[A-Za-z0-9]{16,}",  # Warden agent keys and API tokens
    r"(?i:\bbearer)\s+[A-Za-z0-9._~+/=-]{20,}",  # Authorization: Bearer ...
    r"(?i:\bbasic)\s+(?=[A-Za-z0-9+/]*[0-9+/=])[A-Za-z0-9+/]{12,}={0,2}",  # Authorization: Basic ... (base64)
    r"\bsk-(?:[A-Za-z0-9]+-)*[A-Za-z0-9_-]{20,}",  # OpenAI, Anthropic (sk-ant-...), sk-proj-...
    r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",  # AWS access key ids
    r"\bgh[pousr]_[A-Za-z0-9]{30,}",  # GitHub tokens
    r"\bgithub_pat_[A-Za-z0-9_]{30,}",
    r"\bglpat-[A-Za-z0-9_-]{20,}",  # GitLab
    r"\bxox[abeoprs]-[A-Za-z0-9-]{10,}",  # Slack
    r"\bAIza[0-9A-Za-z_-]{35}",  # Google API keys
    r"\b[rs]k_(?:live|test)_[0-9A-Za-z]{16,}",  # Stripe
    r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",  # JSON web tokens
    r"-----BEGIN[A-Z ]*PRIVATE KEY-----[\s\S]*?(?:-----END[A-Z ]*PRIVATE KEY-----|$)",  # PEM private keys
)))
# user:password@ in a URL: keep the user, drop the password.
URL_PASSWORD = re.compile(r"(?<=://)([^/\s:@]+):[^/\s@]+(?=@)")


def is_secret_key(key) -> bool:
    return isinstance(key, str) and key.strip().lower().replace("-", "_") in SECRET_KEYS


def redact_text(text: str) -> str:
    if not text:
        return text
    text = SECRET_SHAPES.sub(REDACTED, text)
    return URL_PASSWORD.sub(lambda match: f"{match.group(1)}:{REDACTED}", text)


def redact(value):
    """A copy of a payload with every secret replaced, at any depth."""
    if isinstance(value, dict):
        return {key: REDACTED if is_secret_key(key) and item not in (None, "") else redact(item)
                for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(item) for item in value]
    if isinstance(value, str):
        return redact_text(value)
    return value
