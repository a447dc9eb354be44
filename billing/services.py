"""The money side of the gate: estimate, reserve, price the actual usage, settle.

The gate calls these four functions inside its transaction. Amounts are
integer micro-dollars. Until pricing and budgets exist (the budgets issue),
an estimate is what the caller declares and no budget covers anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from django.core.exceptions import ValidationError


@dataclass(frozen=True)
class Estimate:
    micros: int
    problem: str | None = None  # set when the action cannot be priced: the gate denies


@dataclass(frozen=True)
class Reservation:
    outcome: str  # allowed | denied | pending_approval
    micros: int = 0
    reasons: list[str] = field(default_factory=list)
    escalate_to: list[str] = field(default_factory=list)


def estimate_cost(*, action: str, resource: str, cleaned: dict) -> Estimate:
    return Estimate(micros=cleaned.get("estimated_cost_micros", 0))


def reserve(*, agent, micros: int) -> Reservation:
    return Reservation(outcome="allowed", micros=0)


def _whole(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 10**12:
        raise ValidationError({name: "Must be a whole number between 0 and 10^12 (no floats)."})
    return value


def actual_cost(*, action, status: str, usage: dict | None, cost_micros: int | None) -> int:
    """The actual cost of a completed action from its usage report."""
    if usage is not None:
        if not isinstance(usage, dict):
            raise ValidationError({"usage": "Must be an object {model, input_tokens, output_tokens}."})
        if action.action == "llm.call":
            if usage.get("model") != action.resource:
                raise ValidationError({"usage.model": f"This action reserved model {action.resource}, not {usage.get('model')!r}."})
            _whole(usage.get("input_tokens"), "usage.input_tokens")
            _whole(usage.get("output_tokens"), "usage.output_tokens")
    if cost_micros is not None:
        return _whole(cost_micros, "cost_micros")
    return 0 if status == "failed" else action.estimated_cost_micros


def settle(*, action, actual_micros: int) -> dict:
    return {"settled_micros": actual_micros, "released_micros": max(0, action.reserved_micros - actual_micros)}
