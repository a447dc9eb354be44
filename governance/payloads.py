"""One canonical form for the JSON Warden stores and hashes.

PostgreSQL's jsonb does not give back the bytes it was given: it respells
numbers (1e16 comes back as 10000000000000000), refuses the NUL character,
and Python cannot even write a lone surrogate or an integer past 64 bits as
JSON. An audit event is hashed over what PostgreSQL will give back, so what
goes in must already be in a form that survives the round trip:

- integers within int64, no floats (nor NaN or infinities),
- strings and keys without NUL, valid Unicode,
- bounded nesting and size.

Two entry points:

- `check_json(...)` at the edge, where a request enters Warden (the gate's
  `clean_request`, `clean_usage`, the API's JSON parser): anything outside the
  form is refused with a ValidationError naming where (a 400, never a 500);
- `canonical_form(...)` inside `audit_record`: never refuses; whatever a caller
  hands over is turned into the form (a float becomes its spelling as a
  string, a NUL a U+FFFD, ...), so no caller can write an event that later
  fails verification.
"""

from __future__ import annotations

import math

import orjson
from django.core.exceptions import ValidationError

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
CANONICAL_DEPTH = 32  # audit payloads: deeper containers are replaced by a marker
CONTEXT_DEPTH = 16  # an action's context
CONTEXT_BYTES = 16 * 1024
TOO_DEEP = "[nested too deep]"


def text_problem(value: str) -> str | None:
    if "\x00" in value:
        return "contains a NUL character"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid Unicode (a lone surrogate)"
    return None


def json_problem(value, *, path: str, max_depth: int, floats: bool) -> tuple[str, str] | None:
    """(where, what) keeps `value` out of the canonical form (the first thing found), or None."""
    stack = [(value, path, 0)]
    while stack:
        item, where, depth = stack.pop()
        if item is None or isinstance(item, bool):
            continue
        if isinstance(item, int):
            if not INT64_MIN <= item <= INT64_MAX:
                return where, "integers must fit in 64 bits"
        elif isinstance(item, float):
            if not floats:
                return where, "no floats; send a whole number or a string"
            if not math.isfinite(item):
                return where, "not a finite number"
        elif isinstance(item, str):
            problem = text_problem(item)
            if problem:
                return where, problem
        elif isinstance(item, (dict, list)):
            if depth >= max_depth:
                return where, f"nested deeper than {max_depth} levels"
            pairs = item.items() if isinstance(item, dict) else enumerate(item)
            for key, child in pairs:
                if isinstance(item, dict):
                    if not isinstance(key, str):
                        return where, "keys must be strings"
                    problem = text_problem(key)
                    if problem:
                        return where, f"a key {problem}"
                stack.append((child, f"{where}[{key}]" if isinstance(key, int) else f"{where}.{key}", depth + 1))
        else:
            return where, "not a JSON value"
    return None


def check_json(value, *, field: str, max_depth: int = CONTEXT_DEPTH, max_bytes: int | None = CONTEXT_BYTES,
               floats: bool = False):
    """`value` unchanged if it is in the canonical form, else a ValidationError on `field` saying why."""
    problem = json_problem(value, path=field, max_depth=max_depth, floats=floats)
    if problem:
        where, what = problem
        raise ValidationError({where: what[0].upper() + what[1:] + "."})
    if max_bytes is not None and len(orjson.dumps(value)) > max_bytes:
        raise ValidationError({field: f"At most {max_bytes} bytes of JSON."})
    return value


def clean_text(value: str) -> str:
    if text_problem(value) is None:
        return value
    return value.replace("\x00", "\ufffd").encode("utf-8", "backslashreplace").decode("utf-8")


def canonical_form(value, _depth: int = 0):
    """`value` in the canonical form: exactly what a jsonb column will hand back."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if INT64_MIN <= value <= INT64_MAX else str(value)
    if isinstance(value, float):
        return repr(value)  # jsonb would respell it: keep the number as text
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, (dict, list, tuple)):
        if _depth >= CANONICAL_DEPTH:
            return TOO_DEEP
        if isinstance(value, dict):
            return {clean_text(key if isinstance(key, str) else str(_leaf(key))): canonical_form(item, _depth + 1)
                    for key, item in value.items()}
        return [canonical_form(item, _depth + 1) for item in value]
    return canonical_form(_leaf(value), _depth)


def _leaf(value):
    """Dates, times, UUIDs, decimals ... as JSON writes them (what payloads have always held)."""
    return orjson.loads(orjson.dumps(value, default=str))


# --- usage reports ---------------------------------------------------------------

# What a completion may report, each a whole number: tokens of a model call, calls of a tool.
USAGE_COUNTS = ("input_tokens", "output_tokens", "cached_tokens", "reasoning_tokens", "calls", "rows")
MAX_USAGE = 10**9


def clean_usage(usage) -> dict | None:
    """A usage report in its one accepted shape: {model?, <count>: 0..10^9 ...}; unknown fields refused."""
    if usage is None:
        return None
    if not isinstance(usage, dict):
        raise ValidationError({"usage": "An object: {model, input_tokens, output_tokens, ...}."})
    unknown = sorted(set(usage) - {"model", *USAGE_COUNTS}, key=str)
    if unknown:
        raise ValidationError({"usage": f"Unknown field(s) {', '.join(map(repr, unknown))}; "
                                        f"known: model, {', '.join(USAGE_COUNTS)}."})
    cleaned: dict = {}
    if "model" in usage:
        model = usage["model"]
        if not isinstance(model, str) or not model or len(model) > 100 or text_problem(model):
            raise ValidationError({"usage.model": "The model's name: 1 to 100 characters."})
        cleaned["model"] = model
    for name in USAGE_COUNTS:
        if name in usage:
            value = usage[name]
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_USAGE:
                raise ValidationError({f"usage.{name}": f"A whole number between 0 and {MAX_USAGE}."})
            cleaned[name] = value
    return cleaned
