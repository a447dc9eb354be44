"""Plain SQL for the few hot writes of the gate (the ORM costs ~0.5 ms a row here)."""

from __future__ import annotations

from psycopg.types.json import Jsonb

from django.db import connection


def insert(table: str, fields: dict, *, json_fields=(), suffix: str = "", suffix_params=()) -> None:
    """INSERT one row; `suffix` may append SQL that runs in the same round trip."""
    columns = ", ".join(f'"{name}"' for name in fields)
    placeholders = ", ".join(["%s"] * len(fields))
    values = [Jsonb(value) if name in json_fields and value is not None else value for name, value in fields.items()]
    with connection.cursor() as cursor:
        cursor.execute(f'INSERT INTO "{table}" ({columns}) VALUES ({placeholders}){suffix}', [*values, *suffix_params])


def as_saved(model_class, fields: dict):
    """A model instance for a row just written with `insert`."""
    instance = model_class(**fields)
    instance._state.adding = False
    instance._state.db = "default"
    return instance
