from django import template

from audit.filters import AuditFilter

register = template.Library()


@register.filter
def cursor(event) -> str:
    return AuditFilter.token(event)


@register.filter
def trace_url(trace_id: str) -> str:
    """Where the deployment's trace viewer shows this trace (WARDEN_TRACE_URL, with {trace_id}); "" if none."""
    from django.conf import settings

    if not trace_id or not settings.WARDEN_TRACE_URL:
        return ""
    return settings.WARDEN_TRACE_URL.replace("{trace_id}", trace_id)
