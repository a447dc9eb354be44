"""The context: a program's only door to the world.

Every call a program makes (`ctx.llm`, `ctx.tool`, `ctx.plan`, `ctx.read`,
`ctx.delegate`) is a *step* with an index in the run:

    gate (request_action) -> wait for a person if pending -> execute -> complete
    the Action with the provider's usage -> record the result in the step ledger

When a worker takes a run up again (after a crash, an approval, or because the
previous task handed it on) the program is called again from the start, and
every step the ledger already holds is *replayed*: its recorded result is
returned (or its recorded problem raised) without asking the gate or running
anything. A step whose Action completed is therefore never executed twice. A
step that was interrupted between the gate and its completion runs again
under the same Action (the gate's idempotency key is the run, the step and
the attempt).

Programs must be deterministic given what their steps return: take every
outside value through the context. A program that asks for something else at
a recorded step has diverged, and its run fails saying so.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import re
import time
from dataclasses import dataclass

import jsonschema
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import DatabaseError, transaction
from django.db.models import F
from django.utils import timezone

from audit.services import audit_record
from governance.telemetry import tracer
from governance.exceptions import Conflict
from governance.flow import Flow, merge
from governance.gate import RUNTIME_KEY_PREFIX, actions_cancel, complete_action, request_action
from governance.models import Action, ActionOutcome, ActionStatus

from ..models import STEP_FINAL, Agent, AgentRun, Clearance, RunStatus, RunStep, StepKind, StepStatus
from . import providers, tools
from .errors import (PROBLEMS, Abort, Denied, HandOn, Infrastructure, InvalidOutput, NotAllowed, Refused, StepFailed,
                     StepProblem, Stopped, WaitForApproval, WaitForChild)

SIGNALS = (WaitForApproval, WaitForChild, Stopped, HandOn, Abort, Infrastructure)
from .providers import RETRY_MARKER, SIMULATED
from .schemas import PLAN_SCHEMA

logger = logging.getLogger(__name__)

MAX_MESSAGES = 200
MAX_MESSAGE_CHARS = 200_000
MAX_OUTPUT_TOKENS = 1_000_000
MAX_RESULT_CHARS = 256 * 1024
MAX_SCHEMA_CHARS = 20_000  # a response schema is sent to the model (and billed as input): kept small
SUMMARY_CHARS = 600


@dataclass(frozen=True)
class Reply:
    """What a model step gives back: its text, and the parsed JSON when a response schema was given."""

    text: str
    data: object = None
    model: str = ""
    step: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_micros: int = 0
    provider: str = ""


def _infrastructure(method):
    """A database failure under a step stops the task (the run is taken up again), whatever the program catches.

    The runtime's signals (wait for a person, stop, hand on, abort, infrastructure) are BaseExceptions so that
    `except Exception` in a program lets them through; one that a program swallows anyway (a bare `except:`)
    is raised again by its next call to the context, and by the runner when the program returns.
    """

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        if self._signal is not None:
            raise self._signal
        try:
            with tracer.start_as_current_span(f"run.step.{method.__name__}") as span:
                span.set_attribute("warden.run_id", str(self._run.pk))
                return method(self, *args, **kwargs)
        except DatabaseError as error:
            self._signal = Infrastructure(error)
        except SoftTimeLimitExceeded:
            self._signal = Abort("a step ran past the task's time limit")
        except SIGNALS as signal:
            self._signal = signal
        raise self._signal

    return wrapper


_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")  # PostgreSQL refuses NUL; UTF-8 has no lone surrogates


def _clean_text(value: str) -> str:
    return _UNSTORABLE.sub("\ufffd", value)


def _name(value, what: str) -> str:
    """A model's, tool's, view's or agent's name as a program gives it: checked before it is stored anywhere."""
    if not isinstance(value, str) or not 0 < len(value) <= 255 or not value.isprintable():
        raise TypeError(f"{what}: a name of 1 to 255 printable characters")
    return value


def clean_value(value, depth: int = 0):
    """What PostgreSQL's jsonb can store and give back unchanged: no NUL, no NaN, string keys, bounded depth."""
    if depth > 32:
        return None
    if isinstance(value, str):
        return _clean_text(value)
    if isinstance(value, bool) or value is None or isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {_clean_text(str(k)): clean_value(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_value(v, depth + 1) for v in value]
    return _clean_text(str(value))


def _bounded(value):
    text = json.dumps(value, default=str)
    if len(text) <= MAX_RESULT_CHARS:
        return value
    if isinstance(value, dict) and isinstance(value.get("text"), str):
        cut = dict(value, text=value["text"][: MAX_RESULT_CHARS // 2], truncated=True)
        if len(json.dumps(cut, default=str)) <= MAX_RESULT_CHARS:
            return cut
    return {"truncated": True, "preview": text[: MAX_RESULT_CHARS // 2]}


def summary(value, limit: int = SUMMARY_CHARS) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False)
    text = _clean_text(" ".join(text.split()))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _fingerprint(kind: str, name: str, payload) -> str:
    return hashlib.sha256(json.dumps([kind, name, payload], sort_keys=True, default=str).encode()).hexdigest()


def _messages(messages) -> list[dict]:
    if not isinstance(messages, (list, tuple)) or not messages or len(messages) > MAX_MESSAGES:
        raise TypeError(f"messages: a list of 1 to {MAX_MESSAGES} {{role, content}} objects")
    out = []
    for message in messages:
        if not isinstance(message, dict) or message.get("role") not in ("system", "user", "assistant") \
                or not isinstance(message.get("content"), str):
            raise TypeError("each message: {'role': 'system' | 'user' | 'assistant', 'content': str}")
        if len(message["content"]) > MAX_MESSAGE_CHARS:
            raise TypeError(f"a message's content is at most {MAX_MESSAGE_CHARS} characters")
        out.append({"role": message["role"], "content": _clean_text(message["content"])})
    return out


class Context:
    """Handed to a program with its objective: `program(ctx, objective)`. See agents/runtime/__init__.py."""

    def __init__(self, *, run: AgentRun, steps: dict[int, RunStep]):
        self.run_id = str(run.pk)
        self.objective = run.objective
        self.agent = run.agent.name
        self.models = list(run.agent.allowed_models)
        self.tools = list(run.agent.allowed_tools)
        self._run = run
        self._agent = run.agent
        self._steps = steps
        self._index = 0
        self._new = 0
        self._began = time.monotonic()
        self._signal: BaseException | None = None
        # The run's label: what it has seen so far. Every step sends it along (the gate's flow rule).
        self._flow = Flow(run.label, tuple(run.label_sources or ()))
        self._delegation_id = run.delegation_id

    def raise_signal(self) -> None:
        """The runner, after the program returned: a signal the program swallowed still counts."""
        if self._signal is not None:
            raise self._signal

    # --- what programs call ------------------------------------------------------------------

    @_infrastructure
    def llm(self, model: str, messages, max_tokens: int, response_schema: dict | None = None) -> Reply:
        """Call `model` (through the gate, charged from the provider's usage). With `response_schema`, the answer
        must be JSON that validates: an answer that does not is rejected and the model asked again (up to
        WARDEN_RUN_OUTPUT_RETRIES times, told what was wrong); then InvalidOutput."""
        return self._llm(StepKind.LLM, model, messages, max_tokens, response_schema)

    @_infrastructure
    def plan(self, objective: str, schema: dict | None = None, *, model: str | None = None,
             max_tokens: int = 1200) -> dict:
        """Ask a model for a JSON plan {objective, steps, constraints} (or `schema`), validated before anything else
        runs; the run page shows it."""
        schema = schema or PLAN_SCHEMA
        model = model or (self.models[0] if self.models else "")
        if not model:
            raise TypeError("plan(): the agent has no allowed model; pass model=")
        messages = [
            {"role": "system", "content": "You are the planner. Break the objective into a short sequence of concrete "
                                          "steps and state the constraints. Answer with JSON only, matching this "
                                          f"schema: {json.dumps(schema)}"},
            {"role": "user", "content": f"Objective: {objective}"},
        ]
        reply = self._llm(StepKind.PLAN, model, messages, max_tokens, schema)
        AgentRun.objects.filter(pk=self._run.pk).update(plan=reply.data)
        return reply.data

    @_infrastructure
    def tool(self, name: str, **args) -> dict:
        """Call a registered tool (http.get, email.send, the deployment's own) through the gate; its result."""
        name = _name(name, "tool()")
        args = clean_value(args)
        step, replayed = self._step(StepKind.TOOL, name, args, summary(args))
        if replayed:
            return self._replay(step)
        try:
            tool = tools.tool_get(name)
            tools.check_args(tool, args)
        except Refused as problem:
            self._refuse(step, problem)
        context = {"purpose": summary(self.objective, 300), "arguments": summary(args, 500),
                   "run": {"id": self.run_id, "step": step.index}}
        while True:
            action = self._gate(step, tool.action, tool.resource_for(args), context, attempt=0)
            began = time.monotonic()
            try:
                result = tools.execute(tool=tool, args=args, action_id=action.pk, agent_id=self._agent.pk)
            except NotAllowed:
                self._lapsed(step)
                continue
            except tools.ToolError as error:
                self._fail(step, action, StepFailed(f"{name} failed: {error}", step=step.index), began)
            except Refused as problem:  # found out only while running (an e-mail address, a host): nothing was sent
                self._complete(action, "failed", None, tool_source(tool))
                self._refuse(step, problem)
            break
        result = _bounded(clean_value(result))
        self._record(step, action, usage={"calls": 1}, source=tool_source(tool), began=began, result=result,
                     provider="simulated" if tool.simulated else "")
        return result

    @_infrastructure
    def read(self, view: str, *, columns: list | None = None, limit: int | None = None, **filters) -> dict:
        """Rows of a data view (through the gate, on the view's classification from Warden's registry): the
        columns and rows this agent's clearance allows, masked where it must be, at most `limit` rows.
        {"view", "classification", "columns", "rows", "masked", "truncated", "count"}. The run's label rises
        to the view's classification: everything the run sends from now on carries it."""
        from governance.dataviews import data_view_serve, read_request_problem
        from governance.models import DataView

        view = _name(view, "read()")
        filters = clean_value(filters)
        payload = {"filters": filters, "columns": columns, "limit": limit}
        step, replayed = self._step(StepKind.READ, view, payload,
                                    summary({"view": view, **{k: v for k, v in payload.items() if v}}))
        if replayed:
            return self._replay(step)
        found = DataView.objects.filter(name=view).first()
        clearance = Agent.objects.filter(pk=self._agent.pk).values_list("clearance", flat=True).get()
        try:
            asked = read_request_problem(found, clearance=clearance, filters=filters, columns=columns, limit=limit)
        except ValidationError as error:  # an unknown view, a column it does not expose, a masked one ...
            self._refuse(step, Refused("; ".join(error.messages)))
        context = {"filters": asked.filters, "columns": asked.columns, "limit": asked.limit,
                   "purpose": summary(self.objective, 300), "run": {"id": self.run_id, "step": step.index}}
        action = self._gate(step, "data.read", view, context, attempt=0)
        began = time.monotonic()
        try:
            rows = data_view_serve(action=action, view=found, asked=asked, clearance=clearance)
        except ValidationError as error:
            self._fail(step, action, StepFailed(f"reading {view} failed: {'; '.join(error.messages)}",
                                                step=step.index), began)
        result = _bounded(clean_value(rows.as_dict()))
        read = Flow(rows.classification, ({"view": view, "classification": Clearance(rows.classification).label,
                                           "step": step.index, "run": self.run_id},))
        with transaction.atomic():
            self._hold_run()
            step.result, step.output_summary = result, f"{rows.as_dict()['count']} row(s) of {view}" + (
                f", {', '.join(rows.masked)} masked" if rows.masked else "")
            step.label = rows.classification
            step.duration_ms += int((time.monotonic() - began) * 1000)
            step.attempts = [*step.attempts, {"action": str(action.pk), "rows": len(rows.rows)}]
            self._finish_step(step, status=StepStatus.SUCCEEDED,
                              extra=["result", "output_summary", "label", "duration_ms", "attempts"])
            self._raise_label(read)
        return result

    @_infrastructure
    def delegate(self, agent: str, objective: str, *, scopes: list | None = None) -> dict:
        """Hand `objective` to another agent: a child run under a delegation (through the gate, agent.delegate),
        with `scopes` narrowed from this run's (by default all it holds but agent.delegate). Waits for the
        child without holding a worker; returns {"run", "agent", "status", "result", "label"}. The child starts
        with this run's label, and this run's label rises to the child's."""
        from .services import child_run_start

        agent = _name(agent, "delegate()")
        if not isinstance(objective, str) or not objective.strip():
            raise TypeError("delegate(): an objective")
        scopes = sorted(set(scopes)) if scopes is not None else self._held_scopes()
        if not scopes or not all(isinstance(scope, str) for scope in scopes):
            raise TypeError("delegate(): scopes, a non-empty list of scope names")
        objective = _clean_text(objective)
        step, replayed = self._step(StepKind.DELEGATE, agent, {"objective": objective, "scopes": scopes},
                                    summary(objective))
        if replayed:
            return self._replay(step)
        if step.child_id is None:
            context = {"scopes": scopes, "purpose": summary(objective, 300),
                       "run": {"id": self.run_id, "step": step.index}}
            action = self._gate(step, "agent.delegate", agent, context, attempt=0)
            try:
                child = child_run_start(parent=self._run, step=step, agent_name=agent, objective=objective,
                                        scopes=scopes, flow=self._flow)
            except (ValidationError, Conflict) as error:
                message = "; ".join(error.messages) if isinstance(error, ValidationError) else error.message
                self._fail(step, action, StepFailed(f"delegating to {agent} failed: {message}", step=step.index),
                           time.monotonic())
            if child is None:  # cancelled since the gate allowed it
                self._withdraw(action)
            step.child = child
        if step.action_id and Action.objects.filter(pk=step.action_id, status=ActionStatus.DECIDED).exists():
            self._complete(Action.objects.get(pk=step.action_id), "succeeded", None, "warden")
        child = AgentRun.objects.get(pk=step.child_id)
        if child.status not in (RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED):
            raise WaitForChild(child.pk)
        returned = Flow(child.label, tuple(child.label_sources or ()))
        clearance = Agent.objects.filter(pk=self._agent.pk).values_list("clearance", flat=True).get()
        if child.status == RunStatus.SUCCEEDED and child.label > clearance:
            # The child saw more than this agent may: its result is withheld (the flow rule, at the hand-back).
            problem = Denied(f"data flow: agent {self.agent} is cleared for {Clearance(clearance).label} data; "
                             f"the result of {agent}'s run {returned.describe()}", step=step.index)
            with transaction.atomic():
                self._hold_run()
                self._finish_step(step, status=StepStatus.DENIED, error=problem.message, error_kind=problem.kind,
                                  extra=["child"])
            raise problem
        if child.status != RunStatus.SUCCEEDED:
            problem = StepFailed(f"{agent}'s run {child.status}: {child.error or 'no reason given'}", step=step.index)
            with transaction.atomic():
                self._hold_run()
                step.label = child.label
                self._finish_step(step, status=StepStatus.FAILED, error=problem.message, error_kind=problem.kind,
                                  extra=["label", "child"])
                self._raise_label(returned)
            raise problem
        result = {"run": str(child.pk), "agent": agent, "status": child.status, "result": child.result,
                  "label": Clearance(child.label).label}
        with transaction.atomic():
            self._hold_run()
            step.result, step.output_summary, step.label = result, summary(child.result), child.label
            step.cost_micros = child.cost_micros
            self._finish_step(step, status=StepStatus.SUCCEEDED,
                              extra=["result", "output_summary", "label", "child", "cost_micros"])
            self._raise_label(returned)
        return result

    def _held_scopes(self) -> list[str]:
        from agents.models import Delegation
        from agents.selectors import delegation_state
        from governance.selectors import agent_roles

        if self._delegation_id is not None:
            held = delegation_state(Delegation.objects.get(pk=self._delegation_id), at=timezone.now()).scopes
        else:
            held = agent_roles(self._agent.pk, at=timezone.now()).scopes
        return sorted(set(held) - {"agent.delegate"})

    def _raise_label(self, seen: Flow) -> None:
        """The run has seen `seen`: its label rises (inside the caller's transaction, with the step)."""
        flow = merge(self._flow, seen)
        if (flow.classification, flow.sources) != (self._flow.classification, self._flow.sources):
            self._flow = flow
            AgentRun.objects.filter(pk=self._run.pk).update(label=flow.classification,
                                                            label_sources=list(flow.sources))

    # --- the step ledger ---------------------------------------------------------------------

    def _step(self, kind: str, name: str, payload, input_summary: str) -> tuple[RunStep, bool]:
        index = self._index
        self._index += 1
        fingerprint = _fingerprint(kind, name, payload)
        step = self._steps.get(index)
        if step is not None and (step.fingerprint != fingerprint or step.kind != kind):
            raise Abort(f"the program diverged at step {index}: it asked for {kind} {name}, but the run recorded "
                        f"{step.kind} {step.name} there. Programs must be deterministic; take every outside value "
                        "through the context")
        if step is not None and step.status in STEP_FINAL:
            return step, True
        self._go_on(index)
        if step is None:
            step = RunStep.objects.create(run=self._run, index=index, kind=kind, name=name[:255],
                                          fingerprint=fingerprint, input_summary=input_summary,
                                          label_in=self._flow.classification, label=self._flow.classification)
            self._steps[index] = step
            self._changed(step)
        return step, False

    def _go_on(self, index: int) -> None:
        """Before new work: the run is still wanted, within its limits, and this task still has time."""
        if index >= settings.WARDEN_RUN_MAX_STEPS:
            raise Abort(f"the run reached its limit of {settings.WARDEN_RUN_MAX_STEPS} steps (WARDEN_RUN_MAX_STEPS)")
        if self._new and (self._new >= settings.WARDEN_RUN_STEPS_PER_TASK
                          or time.monotonic() - self._began > settings.WARDEN_RUN_TASK_SECONDS):
            raise HandOn()
        alive = AgentRun.objects.filter(pk=self._run.pk, status=RunStatus.RUNNING).update(heartbeat_at=timezone.now())
        if not alive:
            raise Stopped()
        self._new += 1

    def _replay(self, step: RunStep):
        if step.status == StepStatus.SUCCEEDED:
            if step.kind in (StepKind.LLM, StepKind.PLAN):
                return self._reply(step)
            return step.result
        problem = PROBLEMS.get(step.error_kind, StepProblem)
        action_id = str(step.action_id) if step.action_id else None
        raise problem(step.error, step=step.index, reasons=step.reasons, action_id=action_id)

    def _reply(self, step: RunStep) -> Reply:
        result = step.result or {}
        return Reply(text=result.get("text", ""), data=result.get("data"), model=step.name, step=step.index,
                     input_tokens=step.input_tokens, output_tokens=step.output_tokens, cost_micros=step.cost_micros,
                     provider=step.provider)

    # --- asking the gate ---------------------------------------------------------------------

    def _gate(self, step: RunStep, action: str, resource: str, context: dict, *, attempt: int) -> Action:
        """The step's Action: asked once per attempt (idempotent), asked anew if the last one lapsed unused."""
        while True:
            key = f"{RUNTIME_KEY_PREFIX}{self.run_id}:{step.index}:{attempt}:{step.gate_requests}"
            try:
                found = request_action(agent=self._agent, action=action, resource=resource, context=context,
                                       idempotency_key=key, on_behalf_of=self._delegation_id, flow=self._flow)
            except ValidationError as error:  # the gate cannot judge it (a resource too long ...): nothing ran
                self._refuse(step, Refused("the gate cannot judge this request: " + "; ".join(error.messages)))
            except Conflict as error:
                raise Abort(f"step {step.index} asked the gate differently than before: {error.message}") from None
            if found.outcome == ActionOutcome.ALLOWED and found.status == ActionStatus.EXPIRED:
                self._lapsed(step)  # the sweep released it before it ran (a long wait): ask again
                continue
            break
        if found.outcome == ActionOutcome.DENIED:
            step.action = found
            self._finish_step(step, status=StepStatus.DENIED, error=f"denied: {'; '.join(found.reasons)}",
                              error_kind=Denied.kind, reasons=found.reasons)
            raise Denied(f"denied: {'; '.join(found.reasons)}", step=step.index, reasons=found.reasons,
                         action_id=str(found.pk))
        if found.outcome in (ActionOutcome.ALLOWED, ActionOutcome.PENDING_APPROVAL) and not AgentRun.objects.filter(
                pk=self._run.pk, status=RunStatus.RUNNING).exists():
            self._withdraw(found)
        if found.outcome == ActionOutcome.PENDING_APPROVAL:
            if step.status != StepStatus.WAITING_APPROVAL or step.action_id != found.pk:
                step.status, step.action = StepStatus.WAITING_APPROVAL, found
                step.reasons = found.reasons
                step.save(update_fields=["status", "action", "reasons"])
                self._changed(step)
            raise WaitForApproval(found.pk)
        if step.status == StepStatus.WAITING_APPROVAL or step.action_id != found.pk:
            step.status, step.action = StepStatus.RUNNING, found
            step.save(update_fields=["status", "action"])
            self._changed(step)
        return found

    def _withdraw(self, action: Action) -> None:
        """The run was cancelled while the gate decided: nothing runs, and what the decision holds is released
        (the cancellation may have looked for it before it was committed)."""
        from governance.approvals import approvals_withdraw

        reason = f"run {self.run_id} was cancelled"
        approvals_withdraw(agent=self._agent, reason=reason, action_ids=[action.pk])
        actions_cancel(agent=self._agent, by=None, reason=reason, action_ids=[action.pk])
        raise Stopped()

    def _lapsed(self, step: RunStep) -> None:
        """The action closed before it ran: stop if the run was cancelled, else ask the gate again."""
        if AgentRun.objects.filter(pk=self._run.pk).values_list("status", flat=True).first() != RunStatus.RUNNING:
            raise Stopped()
        RunStep.objects.filter(pk=step.pk).update(gate_requests=F("gate_requests") + 1)
        step.gate_requests += 1

    # --- model calls -------------------------------------------------------------------------

    def _llm(self, kind: str, model, messages, max_tokens, response_schema) -> Reply:
        model = _name(model, "llm(): the model")
        messages = _messages(messages)
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or not 1 <= max_tokens <= MAX_OUTPUT_TOKENS:
            raise TypeError(f"max_tokens: a whole number from 1 to {MAX_OUTPUT_TOKENS}")
        schema_text = ""
        if response_schema is not None:
            if not isinstance(response_schema, dict):
                raise TypeError("response_schema: a JSON schema (a dict)")
            schema_text = json.dumps(response_schema)
            if len(schema_text) > MAX_SCHEMA_CHARS:
                raise TypeError(f"response_schema: at most {MAX_SCHEMA_CHARS} characters of JSON")
            jsonschema.validators.validator_for(response_schema).check_schema(response_schema)
        payload = {"messages": messages, "max_tokens": max_tokens, "schema": response_schema}
        step, replayed = self._step(kind, model, payload, summary(messages[-1]["content"]))
        if replayed:
            if step.status == StepStatus.SUCCEEDED:
                return self._reply(step)
            self._replay(step)
        try:
            upstream = providers.upstream_for(model)
        except Refused as problem:
            self._refuse(step, problem)
        conversation = list(messages)
        for attempt_record in step.attempts:  # rejected answers so far: the model is told what was wrong
            if attempt_record.get("rejected"):
                conversation += _feedback(attempt_record["text"], attempt_record["rejected"])
        while True:
            answered = step.attempts[-1] if step.attempts and step.attempts[-1].get("answered") else None
            if answered is None:  # (else: answered and paid for, then interrupted before it was judged)
                attempt = len(step.attempts)
                # The schema goes to the model too, and is billed as input: it is part of the estimate.
                estimate = providers.estimate_input_tokens(conversation) + len(schema_text) // 3
                context = {"input_tokens": estimate, "max_output_tokens": max_tokens,
                           "purpose": summary(self.objective, 300), "run": {"id": self.run_id, "step": step.index}}
                action = self._gate(step, "llm.call", model, context, attempt=attempt)
                began = time.monotonic()
                try:
                    answer = providers.chat(action_id=action.pk, agent_id=self._agent.pk, model=model,
                                            messages=conversation, max_tokens=max_tokens,
                                            response_schema=response_schema, upstream=upstream)
                except NotAllowed:
                    self._lapsed(step)
                    continue
                except providers.ProviderError as error:
                    step.retries += error.retries
                    self._fail(step, action, StepFailed(f"{model}: {error}", step=step.index), began,
                               provider=upstream.label)
                answered = self._settle(step, action, answer, began)
            text = answered["text"]
            data, rejected = (None, "") if response_schema is None else _validate(text, response_schema)
            retrying = bool(rejected) and len(step.attempts) <= settings.WARDEN_RUN_OUTPUT_RETRIES
            if rejected and not retrying:
                problem = InvalidOutput(f"{model}'s answer did not validate after {len(step.attempts)} tries: "
                                        f"{rejected}", step=step.index)
                self._judged(step, status=StepStatus.FAILED, rejected=rejected, problem=problem)
                raise problem
            if rejected:
                self._judged(step, status=StepStatus.RUNNING, rejected=rejected)
                conversation += _feedback(text, rejected)
                continue
            self._judged(step, status=StepStatus.SUCCEEDED, result={"text": text, "data": data})
            return self._reply(step)

    # --- recording ---------------------------------------------------------------------------

    def _hold_run(self) -> None:
        """First in every transaction that records a step: the run's row, so that a cancellation (which locks
        the run, then the audit chain, then the steps) and this worker take their locks in one order."""
        list(AgentRun.objects.select_for_update(no_key=True).filter(pk=self._run.pk).values_list("pk", flat=True))

    def _complete(self, action: Action, status: str, usage: dict | None, source: str) -> Action:
        return complete_action(action=action, status=status, usage=usage, usage_source=source)

    def _settle(self, step: RunStep, action: Action, answer: providers.Answer, began: float) -> dict:
        """The provider answered: its Action completes with the usage it reported, at once and whatever comes of
        the answer (money spent is recorded before anything else can go wrong), and the answer is kept on the
        step, so that a worker that takes the run up again judges it without asking the model again."""
        source = SIMULATED if answer.provider == SIMULATED else "provider"
        usage = answer.usage or {}
        with transaction.atomic():
            self._hold_run()
            completed = self._complete(action, "succeeded", answer.usage, source)
            cost = completed.actual_cost_micros or 0
            entry = {"action": str(action.pk), "cost_micros": cost, "usage_source": source,
                     "input_tokens": usage.get("input_tokens"), "output_tokens": usage.get("output_tokens"),
                     "provider_model": summary(answer.reported_model, 100), "retries": answer.retries,
                     "answered": True, "text": _clean_text(answer.text)[:MAX_RESULT_CHARS]}
            step.attempts = [*step.attempts, entry]
            step.retries += answer.retries
            step.provider = answer.provider
            step.input_tokens += usage.get("input_tokens", 0) or 0
            step.output_tokens += usage.get("output_tokens", 0) or 0
            step.cost_micros += cost
            step.duration_ms += int((time.monotonic() - began) * 1000)
            step.action = action
            step.save(update_fields=["attempts", "retries", "provider", "input_tokens", "output_tokens", "cost_micros",
                                     "duration_ms", "action"])
            AgentRun.objects.filter(pk=self._run.pk).update(cost_micros=F("cost_micros") + cost,
                                                            heartbeat_at=timezone.now())
        self._changed(step)
        return entry

    def _judged(self, step: RunStep, *, status: str, rejected: str = "", result=None,
                problem: StepProblem | None = None) -> None:
        """What became of the last answer: rejected (kept whole: the next attempt is rebuilt from it, and must ask
        the gate exactly as before), or the step's result."""
        entry = dict(step.attempts[-1])
        entry.pop("answered", None)
        if rejected:
            entry["rejected"] = summary(rejected, 1000)
            step.retries += 1
        else:
            entry.pop("text", None)  # the result holds it
        step.attempts = [*step.attempts[:-1], entry]
        fields = ["attempts", "retries"]
        if result is not None:
            step.result = result
            step.output_summary = summary(result["text"])
            fields += ["result", "output_summary"]
        elif rejected:
            step.output_summary = summary(entry.get("text", ""))
            fields.append("output_summary")
        with transaction.atomic():
            self._hold_run()
            if status == StepStatus.RUNNING:
                step.save(update_fields=fields)
                self._changed(step)
            else:
                self._finish_step(step, status=status, error=problem.message if problem else "",
                                  error_kind=problem.kind if problem else "", extra=fields)

    def _record(self, step: RunStep, action: Action, *, usage, source: str, began: float, result, provider: str):
        """A tool ran: complete its action and write the step, in one transaction: either both happened or
        neither."""
        with transaction.atomic():
            self._hold_run()
            completed = self._complete(action, "succeeded", usage, source)
            cost = completed.actual_cost_micros or 0
            step.attempts = [*step.attempts, {"action": str(action.pk), "cost_micros": cost, "usage_source": source}]
            step.cost_micros += cost
            step.duration_ms += int((time.monotonic() - began) * 1000)
            step.action = action
            step.provider = provider
            step.output_summary = summary(result)
            step.result = result
            self._finish_step(step, status=StepStatus.SUCCEEDED,
                              extra=["attempts", "cost_micros", "duration_ms", "provider", "output_summary", "result"])
            AgentRun.objects.filter(pk=self._run.pk).update(cost_micros=F("cost_micros") + cost,
                                                            heartbeat_at=timezone.now())

    def _fail(self, step: RunStep, action: Action, problem: StepProblem, began: float, provider: str = "") -> None:
        """It was allowed and did not work: the action completes as failed (its reservation released)."""
        with transaction.atomic():
            self._hold_run()
            self._complete(action, "failed", None, "warden")
            step.action = action
            step.provider = provider or step.provider
            step.duration_ms += int((time.monotonic() - began) * 1000)
            step.attempts = [*step.attempts, {"action": str(action.pk), "failed": summary(problem.message, 1000)}]
            self._finish_step(step, status=StepStatus.FAILED, error=problem.message, error_kind=problem.kind,
                              extra=["action", "provider", "duration_ms", "attempts", "retries"])
        raise problem

    def _refuse(self, step: RunStep, problem: Refused) -> None:
        """Nothing was asked of the gate, nothing ran: recorded on the step and in the audit log."""
        with transaction.atomic():
            self._hold_run()
            self._finish_step(step, status=StepStatus.REFUSED, error=problem.message, error_kind=problem.kind)
            from .services import run_chain

            audit_record(action="run.step.refuse", actor=self._agent, agent=self._agent,
                         resource=f"run:{self.run_id}", outcome="refused", reasons=[problem.message],
                         delegation_chain=run_chain(self._run),
                         payload={"run_id": self.run_id, "step": step.index, "kind": step.kind, "name": step.name})
        problem.step = step.index
        raise problem

    def _finish_step(self, step: RunStep, *, status: str, error: str = "", error_kind: str = "", reasons=None,
                     extra=()) -> None:
        now = timezone.now()
        step.status, step.error, step.error_kind, step.finished_at = status, _clean_text(error[:4000]), error_kind, now
        if reasons is not None:
            step.reasons = list(reasons)
        step.save(update_fields=["status", "error", "error_kind", "finished_at", "reasons", "action", *extra])
        AgentRun.objects.filter(pk=self._run.pk).update(steps_done=F("steps_done") + 1, heartbeat_at=now)
        self._changed(step)
        from django.db import transaction

        from governance.metrics import STEP_SECONDS, STEPS, safely

        kind, seconds = str(step.kind), (step.duration_ms or 0) / 1000

        def counted():
            STEPS.labels(kind, status).inc()
            STEP_SECONDS.labels(kind).observe(seconds)

        transaction.on_commit(lambda: safely(counted))

    def _changed(self, step: RunStep) -> None:
        from .live import run_changed_on_commit

        run_changed_on_commit(self._run.pk, step=step.index)


def tool_source(tool) -> str:
    return SIMULATED if tool.simulated else "warden"


def _validate(text: str, schema: dict) -> tuple[object, str]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        return None, f"not JSON ({error.msg} at character {error.pos})"
    except (ValueError, RecursionError) as error:  # a number of thousands of digits, nesting thousands deep
        return None, f"not JSON that can be read: {type(error).__name__}"
    try:
        jsonschema.validate(data, schema)
    except jsonschema.ValidationError as error:
        where = "/".join(str(part) for part in error.absolute_path) or "the answer"
        return None, f"{where}: {error.message}"
    except Exception as error:  # noqa: BLE001 - an unresolvable $ref, a 5,000-digit number, nesting too deep ...:
        # whatever stops the check, the answer is not accepted (and the step goes on to retry or fail)
        return None, f"the answer could not be checked against the schema: {type(error).__name__}"
    return clean_value(data), ""


def _feedback(text: str, rejected: str) -> list[dict]:
    return [{"role": "assistant", "content": text},
            {"role": "user", "content": f"{RETRY_MARKER} against the schema: {rejected}. Answer again with JSON only."}]
