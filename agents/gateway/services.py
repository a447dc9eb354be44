"""The gateway's thread side: who is calling, what the gate says, what the upstream's answer cost.

Everything that touches the database runs here (on a worker thread); agents/gateway/app.py runs on the
event loop, forwards bytes and waits for people. The request body is the agent's: the model, the
messages and max_tokens are claims read for the gate's estimate, and the cap the gate reserved for is
written into what goes upstream, so the upstream can never return more than was reserved.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field

from django.conf import settings
from django.core.exceptions import ValidationError

from governance.exceptions import Conflict
from governance.flow import GATEWAY_KEY_PREFIX
from governance.gate import complete_action, request_action
from governance.models import Action, ActionOutcome, ActionStatus

from ..runtime.errors import Refused
from ..runtime.providers import SIMULATED, Upstream, simulated_chat, upstream_for


class GatewayError(Exception):
    """An answer in the OpenAI error shape: {"error": {"type", "message", "code", ...}}."""

    def __init__(self, status: int, kind: str, message: str, **extra):
        super().__init__(message)
        self.status, self.kind, self.message, self.extra = status, kind, message, extra

    def body(self) -> dict:
        return {"error": {"type": self.kind, "code": self.kind, "message": self.message, "param": None,
                          **self.extra}}


@dataclass
class Caller:
    agent: object
    key: object


@dataclass
class Prepared:
    action: Action
    upstream: Upstream | None = None
    body: dict = field(default_factory=dict)  # what goes upstream (the agent's, with Warden's cap)
    stream: bool = False
    payload: bytes = b""  # body, encoded: the bytes whose digest the gate judged
    kind: str = "chat"  # or "embeddings"
    claimed: bool = False  # its GatewayCall is written: this request forwards it


def authenticate(header: str, meta: dict | None = None) -> Caller:
    """The agent behind the key. Bad keys count against the caller's address as on the REST API: past the rate,
    429 (and 503 when the counter cannot be reached: fail closed)."""
    from types import SimpleNamespace

    from governance.api.authentication import resolve_bearer
    from governance.api.throttles import BadCredentials, LimitsUnavailable
    from governance.models import ApiToken

    scheme, _, secret = (header or "").partition(" ")
    resolved = resolve_bearer(secret.strip()) if scheme.lower() == "bearer" and secret.strip() else None
    if resolved is None or isinstance(resolved[1], ApiToken):
        failures = BadCredentials()
        try:
            within = failures.count(SimpleNamespace(META=meta or {}))
        except LimitsUnavailable:
            raise GatewayError(503, "limits_unavailable", "Rate limits cannot be checked right now; try again "
                                                          "shortly.") from None
        if not within:
            raise GatewayError(429, "rate_limit_exceeded", "Too many bad API keys from this address; wait "
                                                           f"{failures.retry_after} s.")
        raise GatewayError(401, "invalid_api_key", "Use an agent key of Warden as the API key.")
    principal, key = resolved
    return Caller(agent=principal.agent, key=key)


def models_for(caller: Caller) -> dict:
    """`GET /v1/models`: the models this agent may call (its allowed models that have an upstream)."""
    from agents.models import Agent

    agent = Agent.objects.get(pk=caller.agent.pk)
    listed = []
    for model in agent.allowed_models:
        try:
            upstream_for(model)
        except Refused:
            continue
        listed.append({"id": model, "object": "model", "created": 0, "owned_by": "warden"})
    return {"object": "list", "data": listed}


# What the gateway forwards. Anything else could make the upstream do (and bill) what the gate never judged:
# several choices, predicted outputs, audio, images fetched from URLs the agent chose, another model.
FORWARDED = {"model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "stop",
             "presence_penalty", "frequency_penalty", "seed", "response_format", "tools", "tool_choice",
             "parallel_tool_calls", "user", "stream", "stream_options", "logit_bias", "n"}
ROLES = {"system", "developer", "user", "assistant", "tool"}


def _idempotency(value: str | None) -> str:
    """The Action's key: the agent's Idempotency-Key (to ask again after an approval), or a fresh one; always
    under the gateway's reserved prefix, so the Action is settled by Warden and by nobody else."""
    import uuid

    if value is None:
        return f"{GATEWAY_KEY_PREFIX}{uuid.uuid4()}"
    value = value.strip()
    if not value or len(value) > 120 or not value.isprintable():
        raise GatewayError(400, "invalid_request_error", "Idempotency-Key: 1 to 120 printable characters.")
    return f"{GATEWAY_KEY_PREFIX}{value}"


def estimate_input_tokens(body: dict) -> int:
    """Conservative, without a tokenizer: a token per 3 bytes of everything the model reads (messages, tools,
    response format), plus framing per message."""
    read = {name: body.get(name) for name in ("messages", "tools", "response_format", "tool_choice")
            if body.get(name) is not None}
    text = json.dumps(read, ensure_ascii=False)
    return 3 + 4 * len(body.get("messages") or []) + math.ceil(len(text.encode("utf-8", "replace")) / 3)


def _check_messages(messages) -> None:
    if not isinstance(messages, list) or not messages or len(messages) > 1000:
        raise GatewayError(400, "invalid_request_error", "messages: a list of 1 to 1,000 message objects.")
    for message in messages:
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise GatewayError(400, "invalid_request_error",
                               f"messages: objects with a role of {', '.join(sorted(ROLES))}.")
        content = message.get("content")
        if isinstance(content, list):
            for part in content:
                if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise GatewayError(400, "invalid_request_error",
                                       "messages: only text content is forwarded by Warden's gateway (images, audio "
                                       "and files are not priced or judged yet).")
        elif content is not None and not isinstance(content, str):
            raise GatewayError(400, "invalid_request_error", "messages: content is a string or a list of text parts.")


def _json_object(raw: bytes, allowed: set[str]) -> dict:
    try:
        body = json.loads(raw or b"{}", parse_constant=_no_constant)
    except (ValueError, RecursionError):
        raise GatewayError(400, "invalid_request_error", "The body is not JSON.") from None
    if not isinstance(body, dict):
        raise GatewayError(400, "invalid_request_error", "The body must be a JSON object.")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise GatewayError(400, "invalid_request_error", f"Warden's gateway does not forward {', '.join(unknown)[:300]}.",
                           param=unknown[0][:100])
    model = body.get("model")
    if not isinstance(model, str) or not model or len(model) > 255 or not model.isprintable():
        raise GatewayError(400, "invalid_request_error", "model: the model's name.")
    return body


def _upstream(model: str) -> Upstream:
    try:
        return upstream_for(model)
    except Refused as refused:
        raise GatewayError(404, "model_not_found", refused.message) from None


def _encoded(forwarded: dict) -> bytes:
    try:
        return json.dumps(forwarded, allow_nan=False, ensure_ascii=False).encode("utf-8")
    except (ValueError, UnicodeEncodeError):
        raise GatewayError(400, "invalid_request_error", "The body holds text or numbers that cannot be sent on "
                                                         "(a lone surrogate, NaN).") from None


def ask(caller: Caller, resource: str, context: dict, key: str, *, action: str = "llm.call") -> Action:
    """The gate's judgement of one gateway call (`key`: the Action's idempotency key, under the gateway's prefix)."""
    try:
        return request_action(agent=caller.agent, key=caller.key, action=action, resource=resource,
                              context=context, idempotency_key=key)
    except ValidationError as error:
        raise GatewayError(400, "invalid_request_error", "; ".join(error.messages)) from None
    except Conflict as error:
        raise GatewayError(409, "idempotency_mismatch", error.message) from None


def prepare_chat(caller: Caller, raw: bytes, idempotency_key: str | None) -> Prepared:
    """Read the request, ask the gate. Raises GatewayError for what cannot be judged."""
    body = _json_object(raw, FORWARDED)
    model = body["model"]
    _check_messages(body.get("messages"))
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise GatewayError(400, "invalid_request_error", "stream: true or false.")
    if body.get("stream_options") is not None and not isinstance(body["stream_options"], dict):
        raise GatewayError(400, "invalid_request_error", "stream_options: an object.")
    n = body.get("n", 1)
    if isinstance(n, bool) or n != 1 or not isinstance(n, int):
        raise GatewayError(400, "invalid_request_error", "n: Warden's gateway answers one choice per request.")
    spelling = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    asked = body.get(spelling)
    if asked is not None and (isinstance(asked, bool) or not isinstance(asked, int) or asked < 1):
        raise GatewayError(400, "invalid_request_error", f"{spelling}: a whole number of at least 1.")
    cap = min(asked or settings.WARDEN_GATEWAY_MAX_TOKENS, settings.WARDEN_GATEWAY_MAX_TOKENS_LIMIT)
    upstream = _upstream(model)
    # What the upstream gets: the agent's request with Warden's cap (in the spelling it used), usage asked for.
    forwarded = {**body, "model": upstream.model or model}
    forwarded.pop("max_tokens", None)
    forwarded.pop("max_completion_tokens", None)
    forwarded[spelling] = cap
    if stream:
        forwarded["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
    payload = _encoded(forwarded)
    # The content is part of what is judged: the same Idempotency-Key with other content is another request.
    context = {"input_tokens": estimate_input_tokens(body), "max_output_tokens": cap, "purpose": "gateway: chat",
               "gateway": {"stream": stream, "request_sha256": hashlib.sha256(payload).hexdigest()}}
    return Prepared(action=ask(caller, model, context, _idempotency(idempotency_key)), upstream=upstream, body=forwarded,
                    stream=stream, payload=payload)


EMBEDDING_FIELDS = {"model", "input", "encoding_format", "dimensions", "user"}


def prepare_embeddings(caller: Caller, raw: bytes, idempotency_key: str | None) -> Prepared:
    """`POST /v1/embeddings`: an llm.call of the model that reads the input and writes no tokens."""
    body = _json_object(raw, EMBEDDING_FIELDS)
    model, given = body["model"], body.get("input")
    items = [given] if isinstance(given, str) else given
    if not isinstance(items, list) or not items or len(items) > 2048 or not all(
            isinstance(item, str) or (isinstance(item, list) and all(isinstance(t, int) and not isinstance(t, bool)
                                                                    for t in item)) for item in items):
        raise GatewayError(400, "invalid_request_error", "input: text, or a list of 1 to 2,048 texts or token arrays.")
    upstream = _upstream(model)
    forwarded = {**body, "model": upstream.model or model}
    payload = _encoded(forwarded)
    # A token array counts a token per element; text a token per 3 bytes.
    tokens = sum(len(item) if isinstance(item, list) else math.ceil(len(item.encode("utf-8")) / 3) + 1
                 for item in items)
    context = {"input_tokens": tokens, "max_output_tokens": 0, "purpose": "gateway: embeddings",
               "gateway": {"embeddings": True, "request_sha256": hashlib.sha256(payload).hexdigest()}}
    return Prepared(action=ask(caller, model, context, _idempotency(idempotency_key)), upstream=upstream, body=forwarded,
                    payload=payload, kind="embeddings")


def simulated_embeddings(prepared: Prepared) -> dict:
    """The simulated provider's embeddings: deterministic unit vectors (the text's hash), labelled simulated."""
    items = prepared.body["input"]
    items = [items] if isinstance(items, str) else items
    size = prepared.body.get("dimensions") if isinstance(prepared.body.get("dimensions"), int) else 16
    size = max(1, min(size, 64))
    data = []
    for index, item in enumerate(items):
        digest = hashlib.sha256(json.dumps(item).encode()).digest()
        vector = [(digest[i % len(digest)] - 127.5) / 127.5 for i in range(size)]
        norm = math.sqrt(sum(v * v for v in vector)) or 1.0
        data.append({"object": "embedding", "index": index, "embedding": [round(v / norm, 6) for v in vector]})
    used = prepared.action.context["input_tokens"]
    return {"object": "list", "data": data, "model": prepared.body["model"], "simulated": True,
            "usage": {"prompt_tokens": used, "total_tokens": used}}


def claim(prepared: Prepared) -> None:
    claim_action(prepared.action, prepared.body["model"], stream=prepared.stream)


def claim_action(action: Action, name: str, *, stream: bool = False) -> None:
    """An allowed Action goes upstream once: a second request with the same key (even at the same moment) is
    refused, not forwarded again."""
    from django.db import IntegrityError, transaction

    from ..models import GatewayCall

    try:
        with transaction.atomic():
            GatewayCall.objects.create(action_id=action.pk, agent_id=action.agent_id, model=name[:255], stream=stream)
    except IntegrityError:
        raise GatewayError(409, "warden_action_closed", "This call's action was already forwarded; ask anew with "
                                                        "another Idempotency-Key.", action_id=str(action.pk)) from None


def admit(header: str, raw: bytes, idempotency_key: str | None, *, embeddings: bool = False,
          meta: dict | None = None) -> Prepared:
    """Who is calling, what the gate says, and (when allowed) the claim to forward: one hop onto a thread."""
    caller = authenticate(header, meta)
    prepared = (prepare_embeddings if embeddings else prepare_chat)(caller, raw, idempotency_key)
    if verdict(prepared.action) is None:
        claim(prepared)
        prepared.claimed = True
    return prepared


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def action_now(action_id) -> Action:
    return Action.objects.select_related("agent").get(pk=action_id)


def verdict(action: Action) -> GatewayError | None:
    """None when the call may go upstream; else the answer the agent gets."""
    if action.outcome == ActionOutcome.ALLOWED and action.status == ActionStatus.DECIDED:
        return None
    extra = {"reasons": list(action.reasons), "action_id": str(action.pk)}
    if action.outcome == ActionOutcome.PENDING_APPROVAL:
        return GatewayError(409, "warden_pending_approval",
                            "A person must approve this call first. Send it again with the same Idempotency-Key "
                            "header once it is approved.", **extra)
    if action.outcome == ActionOutcome.ALLOWED:  # replayed after it completed or lapsed
        return GatewayError(409, "warden_action_closed", f"This call's action is {action.status}; ask anew with "
                                                         "another Idempotency-Key.", **extra)
    return GatewayError(403, "warden_denied", "Warden denied this call: " + "; ".join(action.reasons), **extra)


def usage_of(payload: dict | None) -> dict | None:
    usage = (payload or {}).get("usage")
    if not isinstance(usage, dict):
        return None
    counts = {"input_tokens": usage.get("prompt_tokens"), "output_tokens": usage.get("completion_tokens", 0)}
    counts = {k: v for k, v in counts.items() if isinstance(v, int) and not isinstance(v, bool) and v >= 0}
    return counts or None


def settle(action_id, *, succeeded: bool, usage: dict | None, source: str = "provider",
           upstream_status: int | None = None) -> Action:
    """Complete the call's Action with what the upstream reported (or what was counted). A usage report the
    ledger cannot take (absurd numbers) is replaced by what was reserved, counted by Warden."""
    from django.utils import timezone

    from ..models import GatewayCall

    action = Action.objects.get(pk=action_id)
    status = "succeeded" if succeeded else "failed"
    try:
        completed = complete_action(action=action, status=status, usage=usage, usage_source=source)
    except ValidationError:
        completed = complete_action(action=action, status=status, usage=reserved_usage(action), usage_source="warden")
    GatewayCall.objects.filter(action_id=action_id).update(upstream_status=upstream_status, finished_at=timezone.now())
    return completed


def reserved_usage(action: Action) -> dict:
    """What the call was allowed to use: charged when the upstream was asked and its answer was lost."""
    return {"input_tokens": action.context.get("input_tokens", 0),
            "output_tokens": action.context.get("max_output_tokens", 0)}


def simulated_completion(prepared: Prepared) -> dict:
    """The simulated provider's answer in the protocol's shape (for a model routed to "simulated")."""
    import time
    import uuid

    messages = [{"role": m.get("role", "user"), "content": m["content"] if isinstance(m.get("content"), str)
                 else json.dumps(m.get("content"))} for m in prepared.body["messages"]]
    cap = prepared.body.get("max_tokens") or prepared.body.get("max_completion_tokens")
    answer = simulated_chat(model=prepared.body["model"], messages=messages, max_tokens=cap, response_schema=None)
    return {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
            "model": prepared.body["model"], "system_fingerprint": SIMULATED,
            "choices": [{"index": 0, "finish_reason": answer.finish_reason or "stop",
                         "message": {"role": "assistant", "content": answer.text}}],
            "usage": {"prompt_tokens": answer.input_tokens or 0, "completion_tokens": answer.output_tokens or 0,
                      "total_tokens": (answer.input_tokens or 0) + (answer.output_tokens or 0)}}
