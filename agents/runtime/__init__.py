"""The agent runtime: Warden's Celery workers run agents' programs, every step through the gate.

Writing a program
-----------------

A program is a function `program(ctx, objective)` in a module on the
deployment's allow-list (WARDEN_AGENT_PROGRAMS); an agent names it by its
dotted path. It returns the run's result (anything JSON can hold). The
context is its only door to the world:

    reply = ctx.llm("gpt-4o-mini", [{"role": "user", "content": "..."}], max_tokens=300)
    reply.text, reply.data          # data: the parsed JSON when response_schema= is given
    page = ctx.tool("http.get", url="https://docs.example.com/x")   # a registered tool
    plan = ctx.plan(objective)      # {"objective", "steps", "constraints"}, validated first
    rows = ctx.read("customers", plan="pro", limit=20)   # a data view, shaped by the agent's clearance
    done = ctx.delegate("writer", "draft it")           # another agent's run, under a delegation

Each call is a step: the gate judges it (policies, scopes, budgets), a person
approves it if a policy or budget escalates (the run waits without holding a
worker), it runs, and its Action completes with the usage the provider
reported. What a step can raise, and a program may catch:

    Denied        the gate (or a person) said no
    StepFailed    it ran and failed; InvalidOutput: answers never validated
    Refused       it could not be sent (bad arguments, host not allowed, ...)

The runtime also stops a program on its own (to wait for a person, because
the run was cancelled, to hand the run to the next task) with signals that
are not Exceptions: catch `Exception`, not `BaseException`. A signal a bare
`except:` swallows is raised again by the next `ctx` call, and counts when
the program returns.

Every answer a provider gives is paid for (its Action completes with the
usage reported) before it is checked against `response_schema`, whatever
the check finds. Response schemas are at most 20,000 characters of JSON and
count toward the gate's estimate of input tokens.

Labels travel: the run's label is the highest classification of the data
it has seen (a read raises it to the view's; a child run starts with it and
hands its own back). Every later step carries it, and the gate denies a step
whose receiver (a model, tool, endpoint or agent) is not cleared for it,
naming where the data came from. Not even a program can lower it.

Runs resume from their step ledger: if a worker dies, the program is called
again and every step that finished returns its recorded result without
running again. So a program must be deterministic given what its steps
return: no clocks, random numbers or outside reads except through `ctx`.
"""

from .context import Context, Reply
from .errors import Denied, InvalidOutput, NotAvailable, Refused, StepFailed, StepProblem
from .schemas import PLAN_SCHEMA, REVIEW_SCHEMA
from .tools import Tool

__all__ = ["Context", "Reply", "Denied", "InvalidOutput", "NotAvailable", "Refused", "StepFailed", "StepProblem",
           "PLAN_SCHEMA", "REVIEW_SCHEMA", "Tool"]
