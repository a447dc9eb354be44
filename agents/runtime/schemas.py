"""Response schemas the runtime and the demo programs use (JSON Schema, checked with jsonschema)."""

PLAN_SCHEMA = {
    "type": "object",
    "required": ["objective", "steps", "constraints"],
    "additionalProperties": False,
    "properties": {
        "objective": {"type": "string", "minLength": 1, "maxLength": 300},
        "steps": {"type": "array", "minItems": 1, "maxItems": 8, "items": {"type": "string", "minLength": 1, "maxLength": 300}},
        "constraints": {"type": "array", "maxItems": 6, "items": {"type": "string", "maxLength": 200}},
    },
}

REVIEW_SCHEMA = {
    "type": "object",
    "required": ["approved", "score", "notes"],
    "additionalProperties": False,
    "properties": {
        "approved": {"type": "boolean"},
        "score": {"type": "integer", "minimum": 1, "maximum": 5},
        "notes": {"type": "string", "maxLength": 600},
    },
}
