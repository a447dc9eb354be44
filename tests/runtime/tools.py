"""A deployment's own tool, as WARDEN_TOOLS would name it."""

from agents.runtime import Tool

SEARCH = Tool(name="search", description="Search the intranet.", price_micros=10_000,
              schema={"type": "object", "required": ["query"], "additionalProperties": False,
                      "properties": {"query": {"type": "string", "minLength": 2, "maxLength": 100}}},
              run=lambda args: {"hits": [f"{args['query']}: one", f"{args['query']}: two"]})
