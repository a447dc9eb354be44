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
