"""The demo fleet's programs and its simulated tools (labelled simulated wherever they show).

Every model call goes to whatever WARDEN_LLM_UPSTREAMS routes the model to;
`make run` routes every model to the simulated provider. Programs are
ordinary runtime programs: they only act through `ctx`, and they handle a
denial the way a careful program would.
"""

from __future__ import annotations

import hashlib

from .errors import Denied
from .schemas import REVIEW_SCHEMA
from .tools import Tool


def _pick(seed: str, options: list):
    return options[int(hashlib.sha256(seed.encode()).hexdigest()[:8], 16) % len(options)]


# --- simulated tools -------------------------------------------------------------------------------


def _search(args: dict) -> dict:
    query = args["query"]
    hits = [{"title": f"{query.title()}: {angle}", "url": "https://papers.example/" + hashlib.sha256(f"{query}|{angle}".encode()).hexdigest()[:8],
             "snippet": f"We study {query} with {angle.lower()} and report consistent gains."}
            for angle in ("A survey", "Scaling laws", "Failure modes", "A benchmark")[: args.get("limit", 3)]]
    return {"query": query, "results": hits, "simulated": True}


def _pdf(args: dict) -> dict:
    return {"url": args["url"], "pages": 12, "simulated": True,
            "text": f"Abstract. This paper ({args['url']}) examines the question in depth. Methods. We ran three "
                    "experiments. Results. The effect holds across settings. Limitations. Small samples."}


def _payment(args: dict) -> dict:
    return {"refund_id": "rf_" + hashlib.sha256(args["ticket"].encode()).hexdigest()[:10], "status": "drafted",
            "amount_cents": args["amount_cents"], "simulated": True}


def _ocr(args: dict) -> dict:
    seed = args["document"]
    return {"document": seed, "simulated": True,
            "text": f"INVOICE {seed.upper()} — Supplier: {_pick(seed, ['Acme Parts', 'Nordic Paper', 'Blue Freight'])}; "
                    f"lines: 3 x widgets @ 12.50; 1 x freight @ 40.00; total 77.50 EUR; IBAN DE00 0000 0000"}


def _partner_crm(args: dict) -> dict:
    return {"accepted": True, "customer": args["customer"], "simulated": True}


TOOLS = [
    Tool(name="web-search", description="Search the web (simulated: made-up but plausible results).",
         schema={"type": "object", "required": ["query"], "additionalProperties": False,
                 "properties": {"query": {"type": "string", "minLength": 2, "maxLength": 200},
                                "limit": {"type": "integer", "minimum": 1, "maximum": 4}}},
         run=_search, price_micros=5_000, simulated=True),
    Tool(name="pdf-reader", description="Extract the text of a PDF (simulated).",
         schema={"type": "object", "required": ["url"], "additionalProperties": False,
                 "properties": {"url": {"type": "string", "maxLength": 255}}},
         run=_pdf, price_micros=1_000, simulated=True),
    Tool(name="payments-api", description="Draft a refund in the payments system for a person to confirm (simulated).",
         schema={"type": "object", "required": ["ticket", "amount_cents"], "additionalProperties": False,
                 "properties": {"ticket": {"type": "string", "maxLength": 40},
                                "amount_cents": {"type": "integer", "minimum": 1, "maximum": 100_000}}},
         run=_payment, price_micros=20_000, simulated=True),
    Tool(name="ocr", description="Read the text of a scanned document (simulated).",
         schema={"type": "object", "required": ["document"], "additionalProperties": False,
                 "properties": {"document": {"type": "string", "maxLength": 100}}},
         run=_ocr, price_micros=15_000, simulated=True),
    Tool(name="partner-crm", description="Post an onboarding note to the partner agency's CRM webhook, outside the "
                                         "company (simulated).",
         schema={"type": "object", "required": ["customer", "note"], "additionalProperties": False,
                 "properties": {"customer": {"type": "string", "maxLength": 100},
                                "note": {"type": "string", "maxLength": 4000}}},
         run=_partner_crm, action="tool.http", resource=lambda args: "https://hooks.partner-crm.example/onboarding",
         simulated=True),
]


# --- programs ----------------------------------------------------------------------------------------


def _model(ctx, preferred: str | None = None) -> str:
    if preferred and preferred in ctx.models:
        return preferred
    return ctx.models[0]


def pipeline(ctx, objective):
    """Planner → validator → implementer → reviewer: a plan validated before any step, each step carried out,
    then reviewed. A long final report asks for a large model budget (a policy may send it to finance)."""
    plan = ctx.plan(objective)  # the validator: the plan must match its schema before anything runs
    model = _model(ctx)
    outputs = []
    for number, step in enumerate(plan["steps"][:4], start=1):
        reply = ctx.llm(model, [
            {"role": "system", "content": "You carry out one step of a plan. Be concrete and brief."},
            {"role": "user", "content": f"Objective: {plan['objective']}\nStep {number}: {step}"},
        ], max_tokens=400)
        outputs.append({"step": step, "output": reply.text})
    if "report" in objective.lower() or "review" in objective.lower():
        # The full write-up: a large answer, so a large reservation.
        try:
            report = ctx.llm(_model(ctx, "gpt-4o"), [
                {"role": "system", "content": "Write the complete report from the notes."},
                {"role": "user", "content": "\n\n".join(o["output"] for o in outputs)},
            ], max_tokens=120_000)
            outputs.append({"step": "final report", "output": report.text})
        except Denied as denial:
            outputs.append({"step": "final report", "output": f"not written: {denial.message}"})
    review = ctx.llm(model, [
        {"role": "system", "content": "You review work against its objective and score it from 1 to 5."},
        {"role": "user", "content": f"Objective: {objective}\n\n" + "\n".join(o["output"] for o in outputs)},
    ], max_tokens=300, response_schema=REVIEW_SCHEMA)
    return {"plan": plan, "outputs": outputs, "review": review.data}


def paper_scout(ctx, objective):
    """Search for papers on the objective, read the most promising one and summarise what it found."""
    found = ctx.tool("web-search", query=objective[:200], limit=3)
    first = found["results"][0]
    paper = ctx.tool("pdf-reader", url=first["url"])
    summary = ctx.llm(_model(ctx, "gpt-4o-mini"), [
        {"role": "system", "content": "Summarise research for a busy team in three sentences."},
        {"role": "user", "content": f"{first['title']}\n\n{paper['text']}"},
    ], max_tokens=250)
    return {"paper": first["title"], "summary": summary.text}


TRIAGE_SCHEMA = {
    "type": "object", "required": ["category", "priority", "reply_needed"], "additionalProperties": False,
    "properties": {"category": {"enum": ["billing", "bug", "how-to", "account"]},
                   "priority": {"type": "integer", "minimum": 1, "maximum": 4},
                   "reply_needed": {"type": "boolean"}},
}


def ticket_triage(ctx, objective):
    """Label and prioritise a support ticket. Urgent tickets try a larger model first; if a policy keeps the
    support team to small models, the small one does it."""
    messages = [{"role": "system", "content": "Classify the support ticket."},
                {"role": "user", "content": objective}]
    note = ""
    if "urgent" in objective.lower():
        try:
            reply = ctx.llm(_model(ctx, "claude-sonnet"), messages, max_tokens=150, response_schema=TRIAGE_SCHEMA)
            return {"label": reply.data, "model": reply.model}
        except Denied as denial:
            note = f"larger model denied ({'; '.join(denial.reasons)}); used the small one"
    reply = ctx.llm(_model(ctx, "gpt-4o-mini"), messages, max_tokens=150, response_schema=TRIAGE_SCHEMA)
    return {"label": reply.data, "model": reply.model, "note": note}


def refund_helper(ctx, objective):
    """Draft a refund for a ticket in the payments system and e-mail the agent's owner to confirm it."""
    ticket = "T-" + hashlib.sha256(objective.encode()).hexdigest()[:6].upper()
    amount = 500 + int(hashlib.sha256(objective.encode()).hexdigest()[6:10], 16) % 9500
    drafted = ctx.tool("payments-api", ticket=ticket, amount_cents=amount)
    note = ctx.llm(_model(ctx), [
        {"role": "system", "content": "Write a two-line note asking a person to confirm a drafted refund."},
        {"role": "user", "content": f"Ticket {ticket}: {objective}. Refund {drafted['refund_id']}: {amount / 100:.2f}"},
    ], max_tokens=120)
    sent = ctx.tool("email.send", to=OWNER_EMAIL, subject=f"Confirm refund {drafted['refund_id']} for {ticket}",
                    body=note.text)
    return {"refund": drafted, "mailed": sent["to"]}


OWNER_EMAIL = "admin@warden.local"  # the demo admin's address (seed_demo)

INVOICE_SCHEMA = {
    "type": "object", "required": ["supplier", "total", "currency"], "additionalProperties": False,
    "properties": {"supplier": {"type": "string", "maxLength": 100}, "total": {"type": "number", "minimum": 0},
                   "currency": {"enum": ["EUR", "USD", "GBP"]}},
}


def invoice_reader(ctx, objective):
    """Read supplier invoices and extract their totals, until the work is done or the money is."""
    extracted = []
    for number in range(1, 4):
        scan = ctx.tool("ocr", document=f"{objective[:40]}-{number}")
        reply = ctx.llm(_model(ctx), [
            {"role": "system", "content": "Extract supplier, total and currency from the invoice text."},
            {"role": "user", "content": scan["text"]},
        ], max_tokens=2000, response_schema=INVOICE_SCHEMA)
        extracted.append(reply.data)
    return {"invoices": extracted}


# --- the onboarding team: analysis, decision, communication -----------------------------------------------


def onboarding_lead(ctx, objective):
    """The decision agent: has the analyst profile the new customers, decides who gets a kickoff call, and
    has the welcome writer tell the customers. What it hands on carries the customer data's label."""
    analysis = ctx.delegate("onboarding-analyst", f"Profile the new customers: {objective}",
                            scopes=["data.read", "llm.call"])
    summary = (analysis.get("result") or {}).get("summary", "")
    decision = ctx.llm("local-llm", [
        {"role": "system", "content": "You decide onboarding priorities. Two lines."},
        {"role": "user", "content": f"Analysis: {summary}. Who gets a kickoff call this week?"},
    ], max_tokens=80)
    welcome = ctx.delegate("welcome-writer", f"Welcome the new customers. Decision: {decision.text}",
                           scopes=["llm.call", "tool.http"])
    return {"analysis_run": analysis["run"], "decision": decision.text, "welcome": welcome.get("result"),
            "label": welcome["label"]}


def onboarding_analyst(ctx, objective):
    """The analysis agent: reads the customer view (confidential; masked below that) and summarises it."""
    rows = ctx.read("customers", segment="new", limit=10)
    listing = "; ".join(f"{row['company']} ({row['plan']}, {row['seats']} seats, {row['region']})"
                        for row in rows["rows"])
    reply = ctx.llm("local-llm", [
        {"role": "system", "content": "Profile these new customers in three lines: size, plan, risks."},
        {"role": "user", "content": listing or "no new customers"},
    ], max_tokens=120)
    return {"summary": reply.text, "customers": rows["count"], "masked": rows["masked"]}


def welcome_writer(ctx, objective):
    """The communication agent: drafts the welcome, and tries to post it to the partner agency's CRM, outside
    the company. What it drafts derives from the customer data: the flow rule stops it, and it says so."""
    draft = ctx.llm("local-llm", [
        {"role": "system", "content": "Draft a two-line welcome note for new customers."},
        {"role": "user", "content": objective},
    ], max_tokens=80)
    try:
        posted = ctx.tool("partner-crm", customer="new customers", note=draft.text)
    except Denied as denial:
        return {"draft": draft.text, "posted": False, "why": denial.reasons}
    return {"draft": draft.text, "posted": posted.get("accepted", False)}
