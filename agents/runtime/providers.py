"""Model providers: where the runtime's model calls go, and the usage that comes back.

Two kinds, chosen per model by WARDEN_LLM_UPSTREAMS (never by the agent):

- an OpenAI-compatible chat-completions upstream over HTTP (the official
  `openai` client; base URL and key from settings; a timeout per attempt;
  retries with backoff on 429, 5xx, timeouts and broken connections); usage
  is the upstream's answer (`usage_source: provider`);
- the offline **simulated** provider, for the demo fleet and tests: it answers
  plausibly and deterministically, follows response schemas, and labels all it
  does as simulated (`usage_source: simulated`, and on the run page).

`chat()` refuses to send anything without an allowed, open Action for exactly
this model: the gate is the only way in.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import os
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from governance.models import Action, ActionOutcome, ActionStatus

from .errors import NotAllowed, Refused

logger = logging.getLogger(__name__)

SIMULATED = "simulated"
RETRY_MARKER = "Your previous answer did not validate"


def require_allowed(action_id, *, action: str, resource: str, agent_id=None) -> Action:
    """The Action, read afresh, if it allows exactly this and is still open; NotAllowed otherwise."""
    found = Action.objects.filter(pk=action_id).first() if action_id else None
    if found is None:
        raise NotAllowed("no action: nothing runs without one allowed by the gate")
    if found.outcome != ActionOutcome.ALLOWED or found.status != ActionStatus.DECIDED:
        raise NotAllowed(f"action {found.pk} is {found.outcome}/{found.status}, not allowed and open")
    if found.action != action or found.resource != resource or (agent_id is not None and found.agent_id != agent_id):
        raise NotAllowed(f"action {found.pk} allows {found.action} {found.resource}, not {action} {resource}")
    return found


# --- routing -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Upstream:
    kind: str  # "simulated" | "openai"
    base_url: str = ""
    api_key: str = field(default="", repr=False)
    model: str = ""  # the name the upstream knows the model by
    timeout: float = 60
    max_retries: int = 2

    @property
    def label(self) -> str:
        return SIMULATED if self.kind == SIMULATED else "openai-compatible"


def _routes() -> dict:
    try:
        routes = json.loads(settings.WARDEN_LLM_UPSTREAMS or "{}")
    except json.JSONDecodeError as error:
        raise ImproperlyConfigured(f"WARDEN_LLM_UPSTREAMS is not JSON: {error}") from None
    if not isinstance(routes, dict):
        raise ImproperlyConfigured("WARDEN_LLM_UPSTREAMS must be a JSON object: model (or pattern) -> upstream")
    return routes


def _key(spec: dict) -> str:
    if spec.get("api_key"):
        return str(spec["api_key"])
    if spec.get("api_key_env"):
        return os.environ.get(str(spec["api_key_env"]), "")
    if spec.get("api_key_file"):
        return Path(str(spec["api_key_file"])).read_text().strip()
    return ""


def upstream_for(model: str) -> Upstream:
    """Where calls to `model` go: its own entry, else the most specific matching pattern. Refused if none."""
    routes = _routes()
    spec = routes.get(model)
    if spec is None:
        patterns = sorted((p for p in routes if any(c in p for c in "*?[") and fnmatch.fnmatchcase(model, p)),
                          key=lambda p: (-len(p.replace("*", "")), p))
        spec = routes[patterns[0]] if patterns else None
    if spec is None:
        raise Refused(f"no upstream is configured for model {model} (WARDEN_LLM_UPSTREAMS)")
    if spec == SIMULATED:
        return Upstream(kind=SIMULATED, model=model)
    if not isinstance(spec, dict) or not spec.get("base_url"):
        raise ImproperlyConfigured(f"WARDEN_LLM_UPSTREAMS[{model!r}] must be \"simulated\" or an object with base_url")
    return Upstream(kind="openai", base_url=str(spec["base_url"]).rstrip("/"), api_key=_key(spec),
                    model=str(spec.get("model") or model),
                    timeout=float(spec.get("timeout", settings.WARDEN_LLM_TIMEOUT)),
                    max_retries=int(spec.get("max_retries", settings.WARDEN_LLM_MAX_RETRIES)))


# --- what the runtime reserves --------------------------------------------------------------------


def estimate_input_tokens(messages: list[dict]) -> int:
    """A conservative count without a tokenizer: a token per 3 bytes of text, plus each message's framing.

    Real tokenizers average about 4 characters a token in English; bytes/3 stays above that for most
    text, so what is reserved is rarely less than what the provider then reports.
    """
    total = 3
    for message in messages:
        total += 4 + -(-len(message["content"].encode()) // 3)
    return total


@dataclass
class Answer:
    text: str
    input_tokens: int | None
    output_tokens: int | None
    provider: str
    reported_model: str = ""
    retries: int = 0
    finish_reason: str = ""

    @property
    def usage(self) -> dict | None:
        if self.input_tokens is None and self.output_tokens is None:
            return None  # the provider said nothing: Warden charges what was reserved
        return {k: v for k, v in (("input_tokens", self.input_tokens), ("output_tokens", self.output_tokens))
                if v is not None}


class ProviderError(Exception):
    def __init__(self, message: str, *, status: int | None = None, retries: int = 0):
        super().__init__(message)
        self.status = status
        self.retries = retries


def chat(*, action_id, agent_id, model: str, messages: list[dict], max_tokens: int,
         response_schema: dict | None = None, upstream: Upstream | None = None) -> Answer:
    """Send one chat completion for an allowed action; the upstream's answer and usage."""
    from governance.telemetry import tracer

    with tracer.start_as_current_span("provider.chat") as span:
        span.set_attribute("warden.model", model)
        span.set_attribute("warden.action_id", str(action_id))
        return _chat(action_id=action_id, agent_id=agent_id, model=model, messages=messages, max_tokens=max_tokens,
                     response_schema=response_schema, upstream=upstream)


def _chat(*, action_id, agent_id, model, messages, max_tokens, response_schema, upstream) -> Answer:
    require_allowed(action_id, action="llm.call", resource=model, agent_id=agent_id)
    upstream = upstream or upstream_for(model)
    if upstream.kind == SIMULATED:
        return simulated_chat(model=model, messages=messages, max_tokens=max_tokens, response_schema=response_schema)
    from governance import metrics

    began, error = time.perf_counter(), None
    try:
        return openai_chat(upstream, action_id=action_id, messages=messages, max_tokens=max_tokens,
                           response_schema=response_schema)
    except ProviderError as failed:
        error = str(failed.status or "error")
        raise
    finally:
        metrics.upstream("provider", metrics.host(upstream.base_url), time.perf_counter() - began, error)


# --- OpenAI-compatible over HTTP ------------------------------------------------------------------


def _backoff(attempt: int, retry_after: str | None) -> float:
    if retry_after:
        try:
            return min(10.0, max(0.0, float(retry_after)))
        except ValueError:
            pass
    return min(8.0, 0.5 * 2**attempt) * (0.75 + random.random() / 2)


def openai_chat(upstream: Upstream, *, action_id, messages, max_tokens, response_schema) -> Answer:
    import openai

    client = openai.OpenAI(base_url=upstream.base_url, api_key=upstream.api_key or "none",
                           timeout=upstream.timeout, max_retries=0)
    request = {"model": upstream.model, "messages": messages, "max_tokens": max_tokens,
               "extra_headers": {"X-Warden-Action": str(action_id)}}
    if response_schema is not None:
        request["response_format"] = {"type": "json_schema",
                                      "json_schema": {"name": "output", "schema": response_schema}}
    retries = 0
    while True:
        try:
            completion = client.chat.completions.create(**request)
            break
        except (openai.APITimeoutError, openai.APIConnectionError) as error:
            problem, status, retry_after = f"{type(error).__name__}: {error}", None, None
        except openai.APIStatusError as error:
            problem, status = f"upstream answered {error.status_code}: {_detail(error)}", error.status_code
            retry_after = error.response.headers.get("retry-after") if error.response is not None else None
            if status != 429 and status < 500:
                raise ProviderError(problem, status=status, retries=retries) from None
        except (openai.OpenAIError, ValueError) as error:  # an answer that is not a chat completion
            raise ProviderError(f"upstream answer not understood: {type(error).__name__}: {error}",
                                retries=retries) from None
        if retries >= upstream.max_retries:
            raise ProviderError(problem + (f" (after {retries} retries)" if retries else ""), status=status,
                                retries=retries)
        time.sleep(_backoff(retries, retry_after))
        retries += 1
    try:
        choice = completion.choices[0]
        text = choice.message.content or ""
    except (IndexError, AttributeError, TypeError):
        raise ProviderError("upstream answered without a choice", retries=retries) from None
    usage = getattr(completion, "usage", None)
    return Answer(text=text, provider=upstream.label, reported_model=str(getattr(completion, "model", "") or ""),
                  input_tokens=_count(getattr(usage, "prompt_tokens", None)),
                  output_tokens=_count(getattr(usage, "completion_tokens", None)),
                  retries=retries, finish_reason=str(getattr(choice, "finish_reason", "") or ""))


def _count(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 10**9 else None


def _detail(error) -> str:
    try:
        body = error.response.json()
        message = body.get("error", {}).get("message") if isinstance(body.get("error"), dict) else body.get("error")
        return str(message or body)[:300]
    except Exception:  # not JSON: the status says enough
        return str(error)[:300]


# --- simulated ------------------------------------------------------------------------------------

WORD = re.compile(r"[A-Za-z][A-Za-z\-]{3,}")
STOP = {"this", "that", "with", "from", "your", "have", "into", "what", "when", "will", "about", "their", "there",
        "which", "should", "would", "answer", "json", "return", "write", "give", "only", "each", "step", "steps",
        "objective", "plan", "after", "start", "again"}
STEP_TEMPLATES = ("Gather recent sources on {a}", "Compare what is known about {a} and {b}",
                  "Extract the key figures on {b}", "Draft a summary of {a} for the team",
                  "Check the draft against the objective and list open questions on {c}")
CONSTRAINTS = ("Cite every source", "Keep it under two pages", "Stay within the team's budget",
               "Flag anything that needs a person's decision")


def _seed(model: str, messages: list[dict]) -> random.Random:
    digest = hashlib.sha256(json.dumps([model, messages], sort_keys=True).encode()).hexdigest()
    return random.Random(int(digest[:16], 16))


def _topic(messages: list[dict]) -> list[str]:
    text = " ".join(m["content"] for m in messages if m["role"] == "user")[-2000:]
    seen: dict[str, None] = {}
    for word in WORD.findall(text):
        if word.lower() not in STOP:
            seen.setdefault(word.lower(), None)
    return list(seen) or ["the", "request"]


SENTENCES = (
    "The main point concerns {a} and how it relates to {b}.",
    "Evidence on {a} is consistent; {b} needs a closer look.",
    "A short list: {a}, {b}, then {c}.",
    "Recommendation: prioritise {a}; revisit {c} next week.",
    "Risks are limited to {b}; {a} is on track.",
    "Compared with last time, {c} improved while {a} held steady.",
)


def _sentences(rng: random.Random, topic: list[str], count: int) -> str:
    out = []
    for _ in range(count):
        words = [rng.choice(topic) for _ in range(3)]
        out.append(rng.choice(SENTENCES).format(a=words[0], b=words[1], c=words[2]))
    return " ".join(out)


def _instance(schema: dict, rng: random.Random, topic: list[str], name: str = "value", depth: int = 0):
    """A value that validates against the (simple) JSON schema: objects, arrays, strings, numbers, enums."""
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return rng.choice(schema["enum"])
    kind = schema.get("type", "object" if "properties" in schema else "string")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        properties = schema.get("properties", {})
        return {key: _instance(sub, rng, topic, key, depth + 1) for key, sub in properties.items()}
    if kind == "array":
        low = schema.get("minItems", 1)
        high = max(low, min(schema.get("maxItems", 4), low + 3))
        count = rng.randint(low, high)
        items = schema.get("items", {})
        if name in ("steps", "constraints") and items.get("type", "string") == "string":  # distinct, in order
            pool = STEP_TEMPLATES if name == "steps" else CONSTRAINTS
            picked = sorted(rng.sample(range(len(pool)), min(count, len(pool))))
            words = [rng.choice(topic) for _ in range(3)]
            return [pool[i].format(a=words[0], b=words[1], c=words[2])[: items.get("maxLength", 300)] for i in picked]
        return [_instance(items, rng, topic, name, depth + 1) for _ in range(count)]
    if kind == "integer":
        low, high = schema.get("minimum", 0), schema.get("maximum", 10)
        return rng.randint(low, high)
    if kind == "number":
        low, high = schema.get("minimum", 0), schema.get("maximum", 1)
        return round(low + (high - low) * rng.random(), 2)
    if kind == "boolean":
        return rng.random() < 0.8
    if kind == "null":
        return None
    words = [rng.choice(topic) for _ in range(3)]
    if name == "steps":
        text = rng.choice(STEP_TEMPLATES).format(a=words[0], b=words[1], c=words[2])
    elif name == "constraints":
        text = rng.choice(CONSTRAINTS)
    elif name == "objective":
        text = " ".join(topic[:8]).capitalize()
    elif depth > 1 or name in ("notes", "summary"):
        text = _sentences(rng, topic, 1)
    else:
        text = f"{name.replace('_', ' ').capitalize()}: {' '.join(rng.sample(topic, min(3, len(topic))))}"
    low, high = schema.get("minLength", 0), schema.get("maxLength", 400)
    return (text + " " * low)[:high] if len(text) < low else text[:high]


def simulated_chat(*, model: str, messages: list[dict], max_tokens: int, response_schema: dict | None) -> Answer:
    rng = _seed(model, messages)
    latency = settings.WARDEN_SIMULATED_LATENCY_MS
    if latency > 0:
        time.sleep(latency * (0.5 + rng.random()) / 1000)
    topic = _topic(messages)
    if response_schema is not None:
        value = _instance(response_schema, rng, topic)
        retried = any(RETRY_MARKER in m["content"] for m in messages if m["role"] == "user")
        if not retried and rng.randrange(100) < settings.WARDEN_SIMULATED_INVALID_PERCENT:
            required = response_schema.get("required") or list(response_schema.get("properties", {}))
            if isinstance(value, dict) and required:
                value.pop(required[0], None)  # the classic mistake: a required field left out
            else:
                value = {"unexpected": value}
        text = json.dumps(value)
    else:
        text = _sentences(rng, topic, rng.randint(2, 5))
    text = text[: max_tokens * 4]
    return Answer(text=text, provider=SIMULATED, reported_model=f"{model} (simulated)",
                  input_tokens=estimate_input_tokens(messages) * 3 // 4,
                  output_tokens=min(max_tokens, max(1, len(text) // 4)), finish_reason="stop")
