from django.conf import settings
from rest_framework import exceptions, parsers, status

from governance.payloads import json_problem

BODY_DEPTH = 32  # fields with a tighter bound (an action's context) check their own


class PayloadTooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "The request body is too large."
    default_code = "payload_too_large"


class BoundedJSONParser(parsers.JSONParser):
    """JSON only, at most WARDEN_API_MAX_BODY bytes (413 otherwise), and nothing PostgreSQL would refuse.

    A body nested too deep for the JSON reader, a NUL or lone surrogate in any
    string, or an integer past 64 bits is a 400 here, whatever the endpoint.
    """

    def parse(self, stream, media_type=None, parser_context=None):
        request = (parser_context or {}).get("request")
        limit = settings.WARDEN_API_MAX_BODY
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0) if request is not None else 0
        except ValueError:
            length = 0
        if length > limit:
            raise PayloadTooLarge(f"The request body is {length} bytes; at most {limit} are accepted.")
        try:
            data = super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise exceptions.ParseError(f"JSON parse error - nested deeper than {BODY_DEPTH} levels.") from None
        problem = json_problem(data, path="body", max_depth=BODY_DEPTH, floats=True)
        if problem:
            where, what = problem
            raise exceptions.ValidationError({where.removeprefix("body.") if where != "body" else "non_field_errors":
                                              [what[0].upper() + what[1:] + "."]})
        return data
