from django import template

from billing.services import dollars

register = template.Library()


@register.filter
def usd(micros) -> str:
    return dollars(micros or 0)


@register.filter
def multiply(value, factor):
    return int(value) * int(factor)


@register.filter
def subtract_from(value, total):
    return float(total) - float(value)


@register.filter
def make_list_words(value: str) -> list[str]:
    return value.split()


@register.filter
def subtract(value, other):
    """value - other, for whole micro-dollars."""
    return int(value or 0) - int(other or 0)


@register.filter
def intdiv(value, divisor):
    return int(value) // int(divisor)
