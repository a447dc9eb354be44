"""Cedar policies: checking one policy, compiling a policy-set version, deciding.

A policy-set version is compiled once per process (`compiled(version, rows)`)
and reused until a newer version appears. Cedar evaluates every policy in the
set it is given, so a request is evaluated only against the *slice* that can
match it: policies whose action scope covers the action, whose principal scope
is unconstrained or names the agent, its team or one of its roles, and whose
resource scope is unconstrained or names the resource. Compiled slices are
cached by the exact set of policies they hold. `decide_whole` evaluates the
whole set with the same semantics; the benchmark checks both agree.

Semantics (DESIGN.md, step 3), over enforced policies only:
- a forbid without @escalate that matches, or no permit that matches → denied;
- otherwise, @escalate("<group>") forbids that match → pending approval;
- otherwise → allowed.
@mode("observe") policies are evaluated as if enforced, and the difference is
recorded, never applied. Any evaluation error → denied (fail closed).
"""

from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import orjson
from cedarpy import Decision, Entities, PolicySet, Schema, is_authorized, pst, validate_policies

SCHEMA_PATH = Path(__file__).resolve().parent / "cedar" / "warden.cedarschema"

# Each action needs the scope of the same name and has one resource type.
ACTION_RESOURCE = {
    "llm.call": "Model",
    "tool.call": "Tool",
    "tool.http": "Endpoint",
    "data.read": "DataView",
    "agent.delegate": "Agent",
    "external.call": "Endpoint",
}
ACTION_GROUPS = {
    "use-models": {"llm.call"},
    "use-tools": {"tool.call", "tool.http"},
    "read-data": {"data.read"},
    "act-for-others": {"agent.delegate"},
    "reach-outside": {"tool.http", "external.call"},
}
ESCALATION_GROUPS = ("admin", "finance", "security")
MODES = ("enforce", "observe")


@lru_cache(maxsize=1)
def schema() -> Schema:
    return Schema.from_str(SCHEMA_PATH.read_text())


@lru_cache(maxsize=1)
def base_entities() -> Entities:
    """The action hierarchy, needed for `action in Action::"<group>"`."""
    parents: dict[str, list[str]] = {action: [] for action in ACTION_RESOURCE}
    for group, members in ACTION_GROUPS.items():
        for action in members:
            parents[action].append(group)
    entities = [
        {"uid": {"type": "Action", "id": name}, "attrs": {}, "parents": [{"type": "Action", "id": p} for p in ps]}
        for name, ps in parents.items()
    ] + [{"uid": {"type": "Action", "id": group}, "attrs": {}, "parents": []} for group in ACTION_GROUPS]
    return Entities.from_json_str(json.dumps(entities))


# --- one policy ----------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    line: int | None
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}" if self.line else self.message


DURATION = re.compile(r"^([0-9]{1,4})([mhd])$")
DURATION_UNITS = {"m": 60, "h": 3600, "d": 86400}
MIN_EXPIRY, MAX_EXPIRY = 5 * 60, 30 * 86400


def parse_duration(text) -> int | None:
    """Seconds of "30m", "4h" or "2d" (5 minutes .. 30 days), else None."""
    match = DURATION.match(text or "") if isinstance(text, str) else None
    if not match:
        return None
    seconds = int(match.group(1)) * DURATION_UNITS[match.group(2)]
    return seconds if MIN_EXPIRY <= seconds <= MAX_EXPIRY else None


@dataclass(frozen=True)
class PolicyShape:
    effect: str  # permit | forbid
    mode: str  # enforce | observe
    escalate: str | None
    approvals: int  # approvers an escalation needs (@approvals("2"): two distinct people)
    expires: int | None  # seconds an escalation may wait (@expires("4h")); None: the default
    actions: frozenset[str] | None  # None: any action
    principal_uid: tuple[str, str] | None  # (type, id) the principal must be or be in
    resource_uid: tuple[str, str] | None
    resource_type: str | None


def _uid(entity_uid) -> tuple[str, str]:
    return entity_uid.type.basename, entity_uid.id


def _actions(scope) -> frozenset[str] | None:
    if isinstance(scope, pst.ActionEq):
        names = [scope.entity.id]
    elif isinstance(scope, pst.ActionIn):
        names = [entity.id for entity in scope.entities]
    else:
        return None
    actions: set[str] = set()
    for name in names:
        actions |= ACTION_GROUPS.get(name, {name} if name in ACTION_RESOURCE else set())
    return frozenset(actions)


def _scope_uid(scope) -> tuple[str, str] | None:
    if isinstance(scope, (pst.ScopeEq, pst.ScopeIn)):
        return _uid(scope.entity)
    if isinstance(scope, pst.ScopeIsIn):
        return _uid(scope.entity)
    return None


def _scope_type(scope) -> str | None:
    if isinstance(scope, (pst.ScopeIs, pst.ScopeIsIn)):
        return scope.entity_type.basename
    if isinstance(scope, pst.ScopeEq):
        return scope.entity.type.basename
    return None


def shape_of(node) -> PolicyShape:
    annotations = dict(node.annotations)
    return PolicyShape(
        effect=node.effect,
        mode=annotations.get("mode", "enforce"),
        escalate=annotations.get("escalate"),
        approvals=int(annotations.get("approvals", "1")) if annotations.get("approvals") in ("1", "2") else 1,
        expires=parse_duration(annotations.get("expires")),
        actions=_actions(node.action),
        principal_uid=_scope_uid(node.principal),
        resource_uid=_scope_uid(node.resource),
        resource_type=_scope_type(node.resource),
    )


def _line_of(body: str, message: str) -> int | None:
    """Best effort: the line a Cedar message points at (cedarpy gives no spans)."""
    lines = body.splitlines() or [""]
    if "unexpected end of input" in message:
        return len(lines)
    for token in re.findall(r"`([^`]+)`", message):
        if token.startswith("policy"):
            continue
        for number, line in enumerate(lines, 1):
            if re.search(rf"(?<![\w]){re.escape(token)}(?![\w])", line):
                return number
    # Find the first line whose prefix already fails the same way.
    for number in range(1, len(lines) + 1):
        prefix = "\n".join(lines[:number])
        try:
            PolicySet.from_str(prefix)
        except ValueError as exc:
            if str(exc) == message:
                return number
    return None


def check_policy(body: str) -> tuple[PolicyShape | None, list[Problem]]:
    """Parse and validate one policy against the schema; (shape, problems)."""
    if not body or not body.strip():
        return None, [Problem(None, "The policy is empty.")]
    if len(body) > 20_000:
        return None, [Problem(None, "The policy is longer than 20,000 characters.")]
    try:
        parsed = PolicySet.from_str(body)
        tree = parsed.to_pst()
    except ValueError as exc:
        return None, [Problem(_line_of(body, str(exc)), f"Cedar could not parse this: {exc}")]
    if tree.templates:
        return None, [Problem(None, "Templates (?principal / ?resource) are not supported; name the entities.")]
    nodes = list(tree.static_policies.values())
    if len(nodes) != 1:
        return None, [Problem(None, f"Write exactly one policy here (found {len(nodes)}); add others as separate policies.")]
    node = nodes[0]
    problems: list[Problem] = []
    annotations = dict(node.annotations)
    unknown = sorted(set(annotations) - {"escalate", "mode", "id", "approvals", "expires"})
    if unknown:
        problems.append(Problem(_line_of(body, f"`@{unknown[0]}`"),
                                f"Unknown annotation @{unknown[0]}; use @escalate, @approvals, @expires or @mode."))
    for name in ("approvals", "expires"):
        if name in annotations and "escalate" not in annotations:
            problems.append(Problem(_line_of(body, f"`@{name}`"), f"@{name} only makes sense with @escalate."))
    if "approvals" in annotations and annotations["approvals"] not in ("1", "2"):
        problems.append(Problem(_line_of(body, "`@approvals`"), '@approvals must be "1" or "2" (distinct approvers).'))
    if "expires" in annotations and parse_duration(annotations["expires"]) is None:
        problems.append(Problem(_line_of(body, "`@expires`"),
                                '@expires must be a duration between "5m" and "30d", such as "30m", "4h" or "2d".'))
    if "id" in annotations:
        problems.append(Problem(_line_of(body, "`@id`"), "Do not set @id: the policy's name is its id."))
    if annotations.get("mode", "enforce") not in MODES:
        problems.append(Problem(_line_of(body, "`@mode`"), '@mode must be "enforce" or "observe".'))
    if "escalate" in annotations:
        if node.effect != "forbid":
            problems.append(Problem(_line_of(body, "`@escalate`"), "@escalate only makes sense on a forbid policy."))
        if annotations["escalate"] not in ESCALATION_GROUPS:
            problems.append(Problem(_line_of(body, "`@escalate`"),
                                    f"@escalate must name a group that approves: {', '.join(ESCALATION_GROUPS)}."))
    result = validate_policies(body, schema())
    seen = set()
    for error in result.errors:
        # Cedar repeats one mistake once per action the policy applies to.
        message = re.sub(r' for Action::"[^"]+"', "", error.error.replace("for policy `policy0`, ", ""))
        if message not in seen:
            seen.add(message)
            problems.append(Problem(_line_of(body, message), message))
    if problems:
        return None, problems
    return shape_of(node), []


# --- a compiled policy-set version -----------------------------------------------


@dataclass(frozen=True)
class PolicyRow:
    name: str
    version: int
    body: str


@dataclass
class Outcome:
    outcome: str  # allowed | denied | pending_approval
    reasons: list[str]
    policies: list[str]  # names of the deciding policies
    escalate_to: list[str] = field(default_factory=list)
    observed: dict | None = None  # what observe-mode policies would have done
    error: str | None = None
    approvals: int = 1  # for a pending approval: the most any escalating policy asks for
    expires: int | None = None  # for a pending approval: the shortest wait any escalating policy allows


@dataclass(frozen=True)
class Request:
    action: str
    agent: dict  # Cedar entity JSON of the principal
    resource: dict  # Cedar entity JSON of the resource
    context: dict

    @property
    def principal_uids(self) -> set[tuple[str, str]]:
        uid = self.agent["uid"]
        return {(uid["type"], uid["id"])} | {(p["type"], p["id"]) for p in self.agent["parents"]}

    @property
    def resource_uid(self) -> tuple[str, str]:
        uid = self.resource["uid"]
        return uid["type"], uid["id"]

    def cedar(self) -> dict:
        agent, resource = self.agent["uid"], self.resource["uid"]
        return {
            "principal": f'{agent["type"]}::{json.dumps(agent["id"])}',
            "action": f'Action::{json.dumps(self.action)}',
            "resource": f'{resource["type"]}::{json.dumps(resource["id"])}',
            "context": self.context,
        }

    def entities(self) -> Entities:
        return entities_for(self.agent, self.resource)


ENTITY_CACHE_SIZE = 4096
_entities: OrderedDict[bytes, Entities] = OrderedDict()
_entities_lock = threading.Lock()


def entities_for(agent: dict, resource: dict) -> Entities:
    """The entities of one request (the action hierarchy, the agent, the resource), built once per distinct
    pair and kept (the oldest out): building them cost most of the policy step. The key is the whole
    of both entities as Cedar gets them, so an agent whose roles, lists, clearance or team changed is a new
    key, never a stale hit."""
    key = orjson.dumps([agent, resource])
    found = _entities.get(key)
    if found is not None:
        return found
    built = base_entities().with_added_json_str(key.decode())
    with _entities_lock:
        _entities[key] = built
        if len(_entities) > ENTITY_CACHE_SIZE:
            _entities.popitem(last=False)
    return built


class _Part:
    """A parsed PolicySet plus the names of its policies, by position."""

    __slots__ = ("handle", "names")

    def __init__(self, rows: list[PolicyRow]):
        self.names = [row.name for row in rows]
        self.handle = PolicySet.from_str("\n".join(row.body for row in rows)) if rows else None

    def matching(self, request: dict, entities: Entities) -> tuple[list[str], list[str], bool]:
        """(names of determining policies, evaluation errors, allowed)."""
        if self.handle is None:
            return [], [], False
        result = is_authorized(request, self.handle, entities)
        diagnostics = result.diagnostics
        names = sorted(self.names[int(reason[len("policy"):])] for reason in diagnostics.reasons)
        return names, list(diagnostics.errors), result.decision == Decision.Allow


class _Slice:
    """The three parts a decision needs, over one subset of the policies."""

    def __init__(self, rows: list[PolicyRow], shapes: list[PolicyShape]):
        enforced = [(r, s) for r, s in zip(rows, shapes) if s.mode == "enforce"]
        self.decide = _Part([r for r, s in enforced if not s.escalate])
        self.escalate = _Part([r for r, s in enforced if s.escalate])
        self.escalate_groups = {r.name: s.escalate for r, s in enforced if s.escalate}
        self.escalate_terms = {r.name: (s.approvals, s.expires) for r, s in zip(rows, shapes) if s.escalate}
        observed = [r for r, s in zip(rows, shapes) if s.mode == "observe"]
        # What the decision would be if observe-mode policies were enforced too.
        self.observe = _Part([r for r, s in zip(rows, shapes) if not s.escalate]) if observed else None
        self.observe_escalate = (
            _Part([r for r, s in zip(rows, shapes) if s.escalate])
            if any(s.escalate and s.mode == "observe" for s in shapes)
            else None
        )
        self.observed_names = {r.name for r in observed}


def _evaluate(part_decide: _Part, part_escalate: _Part | None, groups: dict, request: dict, entities: Entities) -> Outcome:
    names, errors, allowed = part_decide.matching(request, entities)
    if errors:
        return Outcome("denied", [f"policy evaluation error: {errors[0]}"], names, error=errors[0])
    if not allowed:
        if names:
            return Outcome("denied", [f"forbidden by policy {name}" for name in names], names)
        return Outcome("denied", ["no policy permits this action"], [])
    if part_escalate is not None:
        forbids, errors, _ = part_escalate.matching(request, entities)
        if errors:
            return Outcome("denied", [f"policy evaluation error: {errors[0]}"], forbids, error=errors[0])
        if forbids:
            return Outcome(
                "pending_approval",
                [f"policy {name} requires approval by {groups.get(name, 'admin')}" for name in forbids],
                forbids,
                escalate_to=sorted({groups.get(name, "admin") for name in forbids}),
            )
    return Outcome("allowed", [f"permitted by policy {name}" for name in names], names)


class CompiledPolicySet:
    def __init__(self, version: int, rows: list[PolicyRow], *, slice_cache_size: int = 4096):
        self.version = version
        self.rows = rows
        self.shapes: list[PolicyShape] = []
        for row in rows:
            shape, problems = check_policy_shape_only(row.body)
            self.shapes.append(shape)
        self._lock = threading.Lock()
        self._slices: OrderedDict[tuple[int, ...], _Slice] = OrderedDict()
        self._cache_size = slice_cache_size
        self._whole: _Slice | None = None
        # index: action -> {None: [i...], (type, id): [i...]} for principal scopes,
        # and action -> {(type, id): [i...]} for resource-constrained policies.
        self._by_action: dict[str, dict] = {}
        for action, resource_type in ACTION_RESOURCE.items():
            principal_index: dict = {}
            resource_index: dict = {}
            for i, shape in enumerate(self.shapes):
                if shape.actions is not None and action not in shape.actions:
                    continue
                if shape.resource_type is not None and shape.resource_type != resource_type:
                    continue
                if shape.resource_uid is not None:
                    resource_index.setdefault(shape.resource_uid, []).append(i)
                else:
                    principal_index.setdefault(shape.principal_uid, []).append(i)
            self._by_action[action] = {"principal": principal_index, "resource": resource_index}

    def __len__(self) -> int:
        return len(self.rows)

    def _indices(self, request: Request) -> tuple[int, ...]:
        index = self._by_action[request.action]
        principal = index["principal"]
        chosen = list(principal.get(None, ()))
        for uid in request.principal_uids:
            chosen.extend(principal.get(uid, ()))
        for i in index["resource"].get(request.resource_uid, ()):
            shape = self.shapes[i]
            if shape.principal_uid is None or shape.principal_uid in request.principal_uids:
                chosen.append(i)
        return tuple(sorted(set(chosen)))

    def _slice(self, indices: tuple[int, ...]) -> _Slice:
        with self._lock:
            cached = self._slices.get(indices)
            if cached is not None:
                self._slices.move_to_end(indices)
                return cached
        built = _Slice([self.rows[i] for i in indices], [self.shapes[i] for i in indices])
        with self._lock:
            self._slices[indices] = built
            if len(self._slices) > self._cache_size:
                self._slices.popitem(last=False)
        return built

    def _run(self, part: _Slice, request: Request) -> Outcome:
        cedar_request = request.cedar()
        entities = request.entities()
        outcome = _evaluate(part.decide, part.escalate, part.escalate_groups, cedar_request, entities)
        if outcome.outcome == "pending_approval":
            terms = [part.escalate_terms[name] for name in outcome.policies if name in part.escalate_terms]
            outcome.approvals = max((approvals for approvals, _ in terms), default=1)
            outcome.expires = min((expires for _, expires in terms if expires), default=None)
        if part.observe is not None:
            groups = dict(part.escalate_groups)
            would = _evaluate(part.observe, part.observe_escalate or part.escalate, groups, cedar_request, entities)
            if would.outcome != outcome.outcome or set(would.policies) & part.observed_names:
                outcome.observed = {"outcome": would.outcome, "reasons": would.reasons, "policies": would.policies}
        return outcome

    def decide(self, request: Request) -> Outcome:
        try:
            return self._run(self._slice(self._indices(request)), request)
        except Exception as exc:  # fail closed on anything the engine raises
            return Outcome("denied", [f"policy evaluation error: {type(exc).__name__}: {exc}"], [], error=str(exc))

    def decide_whole(self, request: Request) -> Outcome:
        """Whole-set evaluation (no slicing): the reference the fast path must match."""
        if self._whole is None:
            self._whole = _Slice(self.rows, self.shapes)
        try:
            return self._run(self._whole, request)
        except Exception as exc:
            return Outcome("denied", [f"policy evaluation error: {type(exc).__name__}: {exc}"], [], error=str(exc))


def check_policy_shape_only(body: str) -> tuple[PolicyShape, list]:
    """Shape of a policy already validated when it was saved (no schema check)."""
    nodes = list(PolicySet.from_str(body).to_pst().static_policies.values())
    return shape_of(nodes[0]), []


_compiled: dict[tuple[int, str], CompiledPolicySet] = {}
_compiled_lock = threading.Lock()


def compiled(version: int, published: str, load_rows) -> CompiledPolicySet:
    """The compiled set of a version, compiling it (once per process) on first use."""
    key = (version, published)
    found = _compiled.get(key)
    if found is not None:
        return found
    with _compiled_lock:
        found = _compiled.get(key)
        if found is None:
            found = CompiledPolicySet(version, load_rows())
            _compiled.clear()  # keep only the newest version in memory
            _compiled[key] = found
    return found
