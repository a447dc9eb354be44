from django import template

from audit.filters import AuditFilter

register = template.Library()


@register.filter
def cursor(event) -> str:
    return AuditFilter.token(event)
