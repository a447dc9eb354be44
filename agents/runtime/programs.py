"""Which programs agents may name, and loading them. Only dotted paths in WARDEN_AGENT_PROGRAMS are imported."""

from __future__ import annotations

import importlib

from django.conf import settings
from django.core.exceptions import ValidationError


def allowed_programs() -> list[str]:
    return list(settings.WARDEN_AGENT_PROGRAMS)


def program_load(path: str):
    """The program's function, if `path` is on the allow-list and names one; ValidationError otherwise."""
    if path not in settings.WARDEN_AGENT_PROGRAMS:
        raise ValidationError({"program": f"{path!r} is not an allowed program; allowed: "
                                          f"{', '.join(settings.WARDEN_AGENT_PROGRAMS) or 'none'} (WARDEN_AGENT_PROGRAMS)."})
    module_name, _, attribute = path.rpartition(".")
    try:
        program = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise ValidationError({"program": f"{path!r} cannot be loaded: {error}"}) from None
    if not callable(program):
        raise ValidationError({"program": f"{path!r} is not a function."})
    return program


def program_check(path: str) -> str:
    """The path to store on an agent ("" for none), checked now: an unknown program is refused at registration."""
    path = (path or "").strip()
    if path:
        program_load(path)
    return path


def program_label(path: str) -> str:
    program = None
    try:
        program = program_load(path) if path else None
    except ValidationError:
        pass
    doc = (getattr(program, "__doc__", None) or "").strip().splitlines()
    return doc[0] if doc else path
