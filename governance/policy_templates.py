"""Starter policies for common guardrails; the editor offers them as templates."""

TEMPLATES: dict[str, tuple[str, str]] = {
    "baseline-permit": (
        "Allow what the agent's roles grant (the gate has already checked scopes). Without any permit, everything is denied.",
        "permit(principal, action, resource);",
    ),
    "model-allow-list-per-role": (
        "Agents with the llm-user role may only call the listed models.",
        'forbid(principal in Role::"llm-user", action == Action::"llm.call", resource)\n'
        'unless { ["gpt-4o-mini", "claude-haiku"].contains(context.model) };',
    ),
    "expensive-calls-need-finance": (
        "Model calls estimated above $1 wait for a finance approval.",
        '@escalate("finance")\n'
        'forbid(principal, action == Action::"llm.call", resource)\n'
        "when { context.estimated_cost_micros > 1000000 };",
    ),
    "confidential-data-needs-clearance": (
        "An agent may only read data classified at or below its clearance.",
        'forbid(principal, action == Action::"data.read", resource)\n'
        "when { context.data_classification > principal.clearance };",
    ),
    "no-deep-delegation": (
        "Nothing may be done through a delegation chain deeper than 2 hops.",
        "forbid(principal, action, resource)\nwhen { context.delegation_depth > 2 };",
    ),
    "business-hours-only": (
        "External calls only Monday to Friday, 09:00 to 18:00 (WARDEN_TIMEZONE). Starts in observe mode.",
        '@mode("observe")\n'
        'forbid(principal, action in Action::"reach-outside", resource)\n'
        "unless { context.weekday <= 5 && context.hour >= 9 && context.hour < 18 };",
    ),
}
