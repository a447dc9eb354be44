"""Bearer secrets for agents and humans: shown once, stored as a hash.

A secret looks like `wdn_agent_<lookup>_<random>`: a recognisable prefix (so
secret scanners and people can tell what leaked), an 8-character lookup id
stored in clear for the index, and 40 random base62 characters (~238 bits).
Only the SHA-256 of the whole secret is stored; with that much entropy a slow
password hash adds nothing but latency on every request.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import string
from dataclasses import dataclass

ALPHABET = string.ascii_letters + string.digits
AGENT_PREFIX = "wdn_agent_"
USER_PREFIX = "wdn_user_"
SHAPE = re.compile(r"^(wdn_agent_|wdn_user_)([A-Za-z0-9]{8})_([A-Za-z0-9]{40})$")


@dataclass(frozen=True)
class NewSecret:
    secret: str
    lookup: str
    digest: str


def _random(length: int) -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(length))


def digest_of(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret(prefix: str) -> NewSecret:
    lookup = _random(8)
    secret = f"{prefix}{lookup}_{_random(40)}"
    return NewSecret(secret=secret, lookup=lookup, digest=digest_of(secret))


def parse(secret: str) -> tuple[str, str] | None:
    """(prefix, lookup) of a well-formed secret, else None."""
    match = SHAPE.match(secret or "")
    if not match:
        return None
    return match.group(1), match.group(2)


def matches(secret: str, digest: str) -> bool:
    return hmac.compare_digest(digest_of(secret), digest)
