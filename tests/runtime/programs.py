"""Programs the runtime tests run (on the allow-list through tests/runtime/conftest.py)."""

from __future__ import annotations

from agents.runtime import Denied, REVIEW_SCHEMA


def ask(ctx, objective):
    """One model call."""
    return ctx.llm("gpt-4o-mini", [{"role": "user", "content": objective}], max_tokens=50).text


def steps(ctx, objective):
    """As many model calls as the objective says, each seeing the last answer."""
    last = "start"
    for number in range(int(objective)):
        last = ctx.llm("gpt-4o-mini", [{"role": "user", "content": f"step {number} after: {last[:200]}"}],
                       max_tokens=40).text
    return {"steps": int(objective), "last": last}


def careful(ctx, objective):
    """The big model first; if that is denied, the small one."""
    try:
        reply = ctx.llm("gpt-4o", [{"role": "user", "content": objective}], max_tokens=100)
    except Denied as denial:
        reply = ctx.llm("gpt-4o-mini", [{"role": "user", "content": objective}], max_tokens=100)
        return {"model": reply.model, "fallback_because": denial.reasons}
    return {"model": reply.model}


def big(ctx, objective):
    """The big model, no fallback."""
    return ctx.llm("gpt-4o", [{"role": "user", "content": objective}], max_tokens=100).text


def structured(ctx, objective):
    return ctx.llm("gpt-4o-mini", [{"role": "user", "content": objective}], max_tokens=200,
                   response_schema=REVIEW_SCHEMA).data


def planned(ctx, objective):
    plan = ctx.plan(objective, model="gpt-4o-mini")
    done = [ctx.llm("gpt-4o-mini", [{"role": "user", "content": step}], max_tokens=30).text for step in plan["steps"]]
    return {"steps": len(done)}


def endless(ctx, objective):
    while True:
        ctx.llm("gpt-4o-mini", [{"role": "user", "content": "again"}], max_tokens=5)


COUNTER = {"n": 0}


def fickle(ctx, objective):
    """Asks something different each time it is called: not deterministic."""
    COUNTER["n"] += 1
    ctx.llm("gpt-4o-mini", [{"role": "user", "content": f"call {COUNTER['n']}"}], max_tokens=5)
    ctx.llm("gpt-4o-mini", [{"role": "user", "content": "and then"}], max_tokens=5)
    raise RuntimeError("stop here")


def reader(ctx, objective):
    return ctx.read("crm", plan="pro")


def fetch(ctx, objective):
    return ctx.tool("http.get", url=objective)


def mailer(ctx, objective):
    return ctx.tool("email.send", to=objective, subject="Hello", body="From a governed agent.")


def searcher(ctx, objective):
    return ctx.tool("search", query=objective)


def swallow(ctx, objective):
    """Catches everything it can around its steps: a cancellation must still stop it."""
    done = 0
    for _ in range(int(objective)):
        try:
            ctx.llm("gpt-4o-mini", [{"role": "user", "content": f"n{done}"}], max_tokens=5)
            done += 1
        except Exception:  # noqa: BLE001 - the point of this program
            pass
    return done


def unjudgeable(ctx, objective):
    """A response schema whose $ref leads nowhere: no answer can be checked against it."""
    return ctx.llm("gpt-4o-mini", [{"role": "user", "content": objective}], max_tokens=50,
                   response_schema={"$ref": "#/definitions/missing"}).data


def oversized(ctx, objective):
    """A response schema far larger than a model should be sent (and billed for)."""
    schema = {"type": "object", "description": "x" * 50_000}
    return ctx.llm("gpt-4o-mini", [{"role": "user", "content": objective}], max_tokens=1, response_schema=schema).data


def strange_text(ctx, objective):
    """Text PostgreSQL cannot store as given: NUL and a lone surrogate, in what it asks and what it returns."""
    reply = ctx.llm("gpt-4o-mini", [{"role": "user", "content": "a\x00b\ud800c"}], max_tokens=20)
    if objective == "bad name":
        ctx.tool("search\x00now", query="x")
    return {"said": reply.text[:10], "odd": "\ud800\x00"}


def stubborn(ctx, objective):
    """Swallows everything, even the runtime's own signals, around an escalated call, then claims success."""
    try:
        ctx.llm("gpt-4o", [{"role": "user", "content": objective}], max_tokens=100)
    except BaseException:  # noqa: BLE001 - the point of this program
        pass
    return "done without waiting"


def analyse(ctx, objective):
    """Reads new customers, asks a model about them, files the answer with a tool: a label on every step."""
    rows = ctx.read("customers", segment="new")
    summary = ctx.llm("local-llm", [{"role": "user", "content": f"Summarise: {rows['rows']}"}], max_tokens=60)
    filed = ctx.tool("search", query=summary.text[:100])
    return {"summary": summary.text, "count": rows["count"], "filed": bool(filed)}


def leak(ctx, objective):
    """Reads customers, then tries to send what it read to an outside endpoint (objective: the URL)."""
    rows = ctx.read("customers", columns=["company", "email"], limit=3)
    return ctx.tool("http.get", url=f"{objective}?emails={','.join(str(r['email']) for r in rows['rows'])}")


def send(ctx, objective):
    """Sends something to an outside endpoint (objective: the URL) without having read any data."""
    return ctx.tool("http.get", url=objective)


def boss(ctx, objective):
    """Hands the analysis to another agent, then asks the model about what came back."""
    done = ctx.delegate("analyst", objective, scopes=["data.read", "llm.call", "tool.call"])
    reply = ctx.llm("local-llm", [{"role": "user", "content": f"Decide on: {done['result']}"}], max_tokens=30)
    return {"child": done["run"], "label": done["label"], "decision": reply.text}


def hand_off(ctx, objective):
    """Reads customers, then hands a summary to another agent (objective: the agent's name)."""
    rows = ctx.read("customers", limit=2)
    return ctx.delegate(objective, f"Welcome {rows['rows'][0]['company']}", scopes=["llm.call"])


def bad_reads(ctx, objective):
    """One bad read after another (objective: which)."""
    asks = {"unknown": lambda: ctx.read("nowhere"), "column": lambda: ctx.read("customers", colour="red"),
            "limit": lambda: ctx.read("customers", limit=10_000),
            "masked": lambda: ctx.read("customers", columns=["company", "email"])}
    return asks[objective]()
