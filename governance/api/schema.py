"""OpenAPI description of Warden's bearer credentials (imported by the app config)."""

from drf_spectacular.extensions import OpenApiAuthenticationExtension


class BearerScheme(OpenApiAuthenticationExtension):
    target_class = "governance.api.authentication.BearerAuthentication"
    name = "bearer"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "An agent key (`wdn_agent_...`) or a human API token (`wdn_user_...`).",
        }


# Every error Warden answers is RFC 9457 problem details (governance/api/exceptions.py). The schema says so
# for each operation, with the statuses it can answer, so clients (and schemathesis) know every answer.
PROBLEM = {
    "type": "object",
    "description": "RFC 9457 problem details.",
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "correlation_id": {"type": "string", "nullable": True},
        "code": {"type": "string", "description": "A stable name for the problem, where one applies."},
        "errors": {"type": "object", "description": "Field name to its messages (400), or the error's details.",
                   "additionalProperties": True},
    },
    "required": ["type", "title", "status", "detail"],
    "additionalProperties": True,
}
ALWAYS = {
    "400": "The request cannot be understood (a query parameter, a NUL character, the page asked for).",
    "401": "No credentials, or credentials that are not valid.",
    "403": "The caller may not do this.",
    "404": "Nothing here, or nothing the caller may see.",
    "429": "Too many requests; see Retry-After.",
    "503": "The database cannot be reached: nothing was decided or written; retry after Retry-After.",
}
WITH_BODY = {
    "409": "Conflicts with the current state (an idempotency key reused with another body, a stale version...).",
    "413": "The body is too large.",
    "415": "The body is not JSON.",
}


def problem_responses(result, generator, request, public):
    """drf-spectacular postprocessing hook: the problem+json errors of every operation."""
    result.setdefault("components", {}).setdefault("schemas", {})["Problem"] = PROBLEM
    ref = {"$ref": "#/components/schemas/Problem"}
    for path in result.get("paths", {}).values():
        for method, operation in path.items():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            errors = dict(ALWAYS, **(WITH_BODY if method in ("post", "put", "patch", "delete") else {}))
            for status, description in errors.items():
                operation["responses"].setdefault(
                    status, {"description": description, "content": {"application/problem+json": {"schema": ref}}})
    return result
