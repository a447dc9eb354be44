"""DRF errors as RFC 9457 problem details (`application/problem+json`)."""

from __future__ import annotations

import logging

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler

from governance.context import get_correlation_id
from governance.errors import RETRY_AFTER, UNAVAILABLE, database_unavailable
from governance.exceptions import Conflict, NotAllowed

logger = logging.getLogger(__name__)

PROBLEM_CONTENT_TYPE = "application/problem+json"


def _flatten(detail) -> object:
    if isinstance(detail, list):
        return [_flatten(item) for item in detail]
    if isinstance(detail, dict):
        return {key: _flatten(value) for key, value in detail.items()}
    return str(detail)


def problem(status_code: int, title: str, detail: str, *, errors=None, request=None, extra=None) -> Response:
    body = {
        "type": "about:blank",
        "title": title,
        "status": status_code,
        "detail": detail,
    }
    if request is not None:
        body["instance"] = request.path
    if errors:
        body["errors"] = errors
    if extra:
        body.update(extra)
    body["correlation_id"] = get_correlation_id()
    return Response(body, status=status_code, content_type=PROBLEM_CONTENT_TYPE)


def problem_exception_handler(exc, context):
    request = context.get("request")
    if database_unavailable(exc):
        # Fail closed: nothing was decided. Logged once per request, without the stack of a real bug.
        logger.warning("database unavailable: %s", exc.__class__.__name__)
        result = problem(503, "Service unavailable", UNAVAILABLE, request=request)
        result["Retry-After"] = RETRY_AFTER
        return result
    if isinstance(exc, Conflict):
        return problem(409, "Conflict", exc.message, request=request, extra={"code": exc.code})
    if isinstance(exc, NotAllowed):
        return problem(403, "Forbidden", exc.message, request=request, extra={"code": exc.code})
    if isinstance(exc, DjangoValidationError):
        exc = exceptions.ValidationError(
            exc.message_dict if hasattr(exc, "error_dict") else {"non_field_errors": exc.messages}
        )
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()

    if isinstance(exc, exceptions.ValidationError):
        errors = _flatten(exc.detail)
        if isinstance(errors, list):
            errors = {"non_field_errors": errors}
        elif isinstance(errors, dict):
            # Always {field: [messages]}, whatever shape the raiser used.
            errors = {key: value if isinstance(value, (list, dict)) else [value] for key, value in errors.items()}
        fields = ", ".join(sorted(errors)) if isinstance(errors, dict) else ""
        return problem(
            status.HTTP_400_BAD_REQUEST,
            "Invalid input",
            f"Some fields are not valid: {fields}." if fields else "The input is not valid.",
            errors=errors,
            request=request,
        )

    response = exception_handler(exc, context)
    if response is None:
        # Not an API exception: log it, answer without a traceback.
        logger.exception("unhandled API error", exc_info=exc)
        return problem(500, "Server error", "Something went wrong on our side; it has been logged.", request=request)

    detail = exc.detail if isinstance(exc, exceptions.APIException) else str(exc)
    title = {
        400: "Bad request",
        401: "Not authenticated",
        403: "Forbidden",
        404: "Not found",
        405: "Method not allowed",
        406: "Not acceptable",
        409: "Conflict",
        413: "Payload too large",
        415: "Unsupported media type",
        429: "Too many requests",
    }.get(response.status_code, "Error")
    extra = {}
    if isinstance(detail, dict):
        extra["errors"] = _flatten(detail)
        detail = title
    result = problem(response.status_code, title, str(_flatten(detail)), request=request, extra=extra)
    for header in ("WWW-Authenticate", "Retry-After", "Allow"):
        if header in response:
            result[header] = response[header]
    return result
