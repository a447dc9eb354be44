"""The fixed catalogue of scopes an agent's roles (or a delegation) can grant.

Each action an agent asks the gate for needs exactly one scope.
"""

SCOPES: dict[str, str] = {
    "llm.call": "Call a language model",
    "tool.call": "Call a registered tool",
    "tool.http": "Make an HTTP request through a tool",
    "data.read": "Read a data view",
    "agent.delegate": "Delegate scopes to another agent",
    "external.call": "Call an external API",
}


def unknown_scopes(scopes) -> list[str]:
    return sorted(set(scopes) - set(SCOPES))
