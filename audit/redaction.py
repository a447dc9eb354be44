"""What never reaches the audit log: secrets, by the name of their key or by their look.

- A value whose key names a secret (`password`, `api_key`, `Authorization`,
  `accessToken`, `X-Auth-Token`, `db_password`, ...: the key's last word, or
  last two, in snake_case) is replaced whole. Whole words, never substrings:
  `input_tokens`, `max_output_tokens` and `token_count` are counts, never
  redacted.
- Anywhere in any string, at any depth, whatever its key: Warden's own
  credentials, bearer and basic credentials, the common shapes of provider
  keys (OpenAI/Anthropic, AWS, GitHub, GitLab, Slack, Google, Stripe), JSON
  web tokens, PEM private keys, passwords in URLs and secret-named query
  parameters (`?api_key=...&token=...`) are cut out of the text, which
  otherwise stays readable.
"""

from __future__ import annotations

import re

REDACTED = "[redacted]"

# A key is a secret's name when, written in snake_case (`accessToken`, `X-Auth-Token` and
# `access_token` are the same), it is one of these or ends in one: `db_password`, `client_secret`,
# `x_amz_security_token`. Whole words only: `input_tokens`, `token_count` and `idempotency_key` are
# not secrets.
SECRET_NAMES = frozenset({
    "password", "passwd", "passphrase", "secret", "token", "apikey", "api_key", "private_key",
    "secret_key", "access_key", "client_key", "authorization", "cookie", "credentials", "credential",
})
SECRET_WORDS = frozenset(name for name in SECRET_NAMES if "_" not in name)
SECRET_PAIRS = frozenset(name for name in SECRET_NAMES if "_" in name)
CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")

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


# secret=... in a query string or a form body, whatever the text around it
QUERY_SECRET = re.compile(
    r"(?i)(?<![A-Za-z0-9_])((?:[a-z0-9]+[_-])*(?:password|passwd|secret|token|api[_-]?key|access[_-]?key|"
    r"private[_-]?key|signature|sig|auth)=)[^&\s#\"']+")


def is_secret_key(key) -> bool:
    if not isinstance(key, str):
        return False
    words = [word for word in re.split(r"[_\W]+", CAMEL.sub("_", key.strip()).lower()) if word]
    if not words:
        return False
    return words[-1] in SECRET_WORDS or "_".join(words[-2:]) in SECRET_PAIRS


def redact_text(text: str) -> str:
    if not text:
        return text
    text = SECRET_SHAPES.sub(REDACTED, text)
    text = QUERY_SECRET.sub(lambda match: match.group(1) + REDACTED, text)
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
