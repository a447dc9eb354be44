"""What a step can raise into a program, and the runtime's own signals (which programs cannot catch).

A program may catch `StepProblem` (or one of its kinds) and carry on: use a
cheaper model after a denial, skip a tool that failed. What the runtime uses
to stop, pause or hand on a run derives from BaseException, so a program's
`except Exception` never swallows a cancellation or a wait for approval.
"""

from __future__ import annotations


class StepProblem(Exception):
    """A step did not give a result. `step` is its index in the run, `reasons` what Warden recorded."""

    kind = "problem"

    def __init__(self, message: str, *, step: int | None = None, reasons=(), action_id: str | None = None):
        super().__init__(message)
        self.message = message
        self.step = step
        self.reasons = list(reasons)
        self.action_id = action_id


class Denied(StepProblem):
    """The gate said no: a policy, a scope, a budget, or a person (an approval denied or expired)."""

    kind = "denied"


class StepFailed(StepProblem):
    """It was allowed and ran, and did not work: the provider or tool failed, or timed out."""

    kind = "failed"


class InvalidOutput(StepFailed):
    """The model's answers did not validate against the response schema, retries included."""

    kind = "invalid_output"


class Refused(StepProblem):
    """The runtime could not build the request (bad arguments, a host off the allow-list, no upstream for
    the model): nothing was asked of the gate and nothing ran."""

    kind = "refused"


class NotAvailable(Refused):
    """A capability the runtime does not serve yet."""

    kind = "not_available"


PROBLEMS = {cls.kind: cls for cls in (StepProblem, Denied, StepFailed, InvalidOutput, Refused, NotAvailable)}


class NotAllowed(Exception):
    """A provider or tool was asked to run without an allowed, open Action: refused before anything is sent."""


# --- the runtime's own signals -------------------------------------------------------------------


class RunSignal(BaseException):
    """Stops the program where it is; the runner decides what happens to the run."""


class WaitForApproval(RunSignal):
    def __init__(self, action_id):
        super().__init__(f"waiting for the approval of action {action_id}")
        self.action_id = action_id


class WaitForChild(RunSignal):
    """A delegated run is working: the parent holds no worker meanwhile; the child's end sends it on."""

    def __init__(self, child_id):
        super().__init__(f"waiting for child run {child_id}")
        self.child_id = child_id


class Stopped(RunSignal):
    """The run was cancelled (by a person, or its agent was suspended)."""


class HandOn(RunSignal):
    """This task has done its share: the run continues in a new task."""


class Abort(RunSignal):
    """The run cannot go on whatever the program does (diverged replay, step limit, program not allowed)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class Infrastructure(RunSignal):
    """The database (or another part of Warden) failed under the step: try the run again later."""

    def __init__(self, error: BaseException):
        super().__init__(f"{type(error).__name__}: {error}")
        self.error = error
