"""Data views that serve data: a named, read-only query over a source, shaped by the reader's clearance.

A view (governance.models.DataView) exposes `columns` of a source and nothing else:

    file:<path>.jsonl | file:<path>.csv   a file under WARDEN_DATA_DIR (demos)
    table:<alias>:<table>                 a table in a database Warden connects to through the alias
                                          (a DATABASES entry named in WARDEN_DATA_DATABASES; connect it
                                          as a role that may only SELECT), one SELECT of quoted identifiers

For a reader of a given clearance, `masks` hide the values of columns it is not cleared for, and
`row_rules` keep only the rows it may see. Filters are equalities on exposed columns the reader sees
unmasked; the answer has at most the view's `max_rows` rows.

`read_request_problem` is checked before the gate is asked (bad input reads nothing and decides nothing);
`read_rows` runs after an allowed `data.read`.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import DatabaseError, connections, transaction

from agents.models import Clearance

from .models import DataView

MASK = "•••"
FILTER_VALUE_TYPES = (str, int, bool)


@dataclass(frozen=True)
class ReadRequest:
    filters: dict
    columns: list[str]
    limit: int


@dataclass
class Rows:
    view: str
    classification: int
    columns: list[str]
    rows: list[dict]
    masked: list[str] = field(default_factory=list)
    truncated: bool = False

    def as_dict(self) -> dict:
        return {"view": self.view, "classification": Clearance(self.classification).label, "columns": self.columns,
                "rows": self.rows, "masked": self.masked, "truncated": self.truncated, "count": len(self.rows)}


def clearance_value(value) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value in Clearance.values:
        return value
    if isinstance(value, str) and value in Clearance.labels:
        return Clearance.labels.index(value)
    raise ValidationError(f"A clearance: one of {', '.join(Clearance.labels)}.")


def masked_for(view: DataView, clearance: int) -> list[str]:
    return [column for column, needed in (view.masks or {}).items() if clearance < clearance_value(needed)]


def column_classification(view: DataView, column: str) -> int:
    """A column's classification: its mask's clearance if a mask names it, else the view's base (or the view's)."""
    if column in (view.masks or {}):
        return clearance_value(view.masks[column])
    return view.classification if view.base_classification is None else view.base_classification


def served_classification(view: DataView, clearance: int, columns: list[str] | None = None) -> int:
    """The label of what a reader of this clearance gets: the highest classification among the columns served
    to it unmasked (all the view's columns when `columns` is None). A masked column carries nothing."""
    if not view.source:
        return view.classification
    hidden = set(masked_for(view, clearance))
    shown = [c for c in (view.columns if columns is None else columns) if c not in hidden]
    return max([Clearance.PUBLIC, *(column_classification(view, c) for c in shown)])


def check_view_shape(*, source: str, columns, masks, row_rules, max_rows, classification=None,
                     base_classification=None) -> None:
    """What an admin registers: a source Warden can read, columns, masks and rules that refer to them."""
    errors = {}
    if source:
        try:
            _source(source)
        except ValidationError as error:
            errors["source"] = error.messages
    if not isinstance(columns, list) or not all(isinstance(c, str) and c.isidentifier() for c in columns) \
            or len(set(columns)) != len(columns) or len(columns) > 100:
        errors["columns"] = "A list of distinct column names (letters, digits and underscores), at most 100."
        columns = []
    if source and not columns:
        errors.setdefault("columns", "A view with a source exposes at least one column.")
    if not isinstance(masks, dict) or any(c not in columns for c in masks):
        errors["masks"] = "An object {column: clearance} over the exposed columns."
    else:
        try:
            [clearance_value(v) for v in masks.values()]
        except ValidationError as error:
            errors["masks"] = error.messages
    if not isinstance(row_rules, list) or not all(
            isinstance(rule, dict) and set(rule) == {"below", "column", "in"} and rule["column"] in columns
            and isinstance(rule["in"], list) and all(isinstance(v, FILTER_VALUE_TYPES) for v in rule["in"])
            for rule in row_rules):
        errors["row_rules"] = 'A list of {"below": clearance, "column": exposed column, "in": [values]}.'
    else:
        try:
            [clearance_value(rule["below"]) for rule in row_rules]
        except ValidationError as error:
            errors["row_rules"] = error.messages
    if isinstance(max_rows, bool) or not isinstance(max_rows, int) or not 1 <= max_rows <= 10_000:
        errors["max_rows"] = "From 1 to 10,000."
    if base_classification is not None and classification is not None and base_classification > classification:
        errors["base_classification"] = "At most the view's classification (the view is as sensitive as its most " \
                                        "sensitive column)."
    if classification is not None and isinstance(masks, dict) and "masks" not in errors and any(
            clearance_value(v) > classification for v in masks.values()):
        errors["masks"] = "A mask's clearance is at most the view's classification."
    if errors:
        raise ValidationError(errors)


def read_request_problem(view: DataView | None, *, clearance: int, filters, columns, limit) -> ReadRequest:
    """A read as asked, checked against the view and the reader's clearance: ValidationError says what is wrong
    (an unknown view, filters on columns it does not expose, a masked column asked for by name, a row limit
    over the maximum) before anything is asked of the gate or read."""
    if view is None or not view.active:
        raise ValidationError({"view": "No such data view (or it is retired)."})
    if not view.source:
        raise ValidationError({"view": f"Data view {view.name} is registered but serves no data (it has no source)."})
    hidden = set(masked_for(view, clearance))
    if filters is None:
        filters = {}
    if not isinstance(filters, dict) or len(filters) > 10:
        raise ValidationError({"filters": "An object of at most 10 {column: value} equalities."})
    for column, value in filters.items():
        if column not in view.columns:
            raise ValidationError({"filters": f"{view.name} has no column {column!r} to filter on; it exposes "
                                              f"{', '.join(view.columns)}."})
        if column in hidden:
            raise ValidationError({"filters": f"{column} is masked at this clearance: it cannot be filtered on."})
        if not isinstance(value, FILTER_VALUE_TYPES) or (isinstance(value, str) and len(value) > 200):
            raise ValidationError({"filters": f"{column}: a string (at most 200 characters), a number or a boolean."})
    if columns is None:  # all of them: the masked ones come back masked
        return _with_limit(view, filters, list(view.columns), limit)
    if not isinstance(columns, list) or not columns or not all(isinstance(c, str) for c in columns):
        raise ValidationError({"columns": "A non-empty list of column names."})
    for column in columns:
        if column not in view.columns:
            raise ValidationError({"columns": f"{view.name} has no column {column!r}; it exposes "
                                              f"{', '.join(view.columns)}."})
        if column in hidden:
            raise ValidationError({"columns": f"{column} is masked at this clearance: leave it out or read all "
                                              "columns (it comes back masked)."})
    return _with_limit(view, filters, columns, limit)


def _with_limit(view: DataView, filters: dict, columns: list[str], limit) -> ReadRequest:
    if limit is None:
        limit = view.max_rows
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= view.max_rows:
        raise ValidationError({"limit": f"From 1 to {view.max_rows} rows (the view's maximum)."})
    return ReadRequest(filters=dict(filters), columns=list(dict.fromkeys(columns)), limit=limit)


def read_rows(view: DataView, request: ReadRequest, *, clearance: int) -> Rows:
    """The rows the reader may see: the view's rules and the filters, the asked columns, masks applied."""
    rules = [(rule["column"], list(rule["in"])) for rule in view.row_rules or []
             if clearance < clearance_value(rule["below"])]
    kind, where = _source(view.source)
    fetch = _file_rows if kind == "file" else _table_rows
    rows, truncated = fetch(where, columns=list(view.columns), filters=request.filters, rules=rules,
                            limit=request.limit)
    hidden = set(masked_for(view, clearance))
    shown = [column for column in request.columns]
    # Masked columns were refused by name; when all columns were asked for they come back masked.
    out = [{column: (MASK if column in hidden else _plain(row.get(column))) for column in shown} for row in rows]
    return Rows(view=view.name, classification=served_classification(view, clearance, shown), columns=shown, rows=out,
                masked=[c for c in shown if c in hidden], truncated=truncated)


def _plain(value):
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _source(source: str) -> tuple[str, object]:
    kind, _, rest = source.partition(":")
    if kind == "file":
        root = Path(settings.WARDEN_DATA_DIR).resolve()
        path = (root / rest).resolve()
        if not rest or root not in path.parents or path.suffix not in (".jsonl", ".csv"):
            raise ValidationError(f"file:<path> of a .jsonl or .csv file under WARDEN_DATA_DIR ({root}).")
        return "file", path
    if kind == "table":
        alias, _, table = rest.partition(":")
        if alias not in settings.WARDEN_DATA_DATABASES or alias not in connections.databases:
            raise ValidationError(f"table:<alias>:<table> with an alias in WARDEN_DATA_DATABASES "
                                  f"({', '.join(settings.WARDEN_DATA_DATABASES) or 'none configured'}).")
        parts = table.split(".")
        if not 1 <= len(parts) <= 2 or not all(part.isidentifier() for part in parts):
            raise ValidationError("table:<alias>:<table or schema.table>, plain identifiers.")
        return "table", (alias, parts)
    raise ValidationError("A source is file:<path> or table:<alias>:<table>.")


def _matches(row: dict, filters: dict, rules) -> bool:
    for column, value in filters.items():
        if not _equal(row.get(column), value):
            return False
    return all(any(_equal(row.get(column), allowed) for allowed in values) for column, values in rules)


def _equal(stored, wanted) -> bool:
    """Compared as text, as a table's values are (CSV holds text: 1 matches "1", true matches "true")."""
    return stored is not None and _as_text(stored) == _as_text(wanted)


def _file_rows(path: Path, *, columns, filters, rules, limit) -> tuple[list[dict], bool]:
    rows = []
    for row in _file_records(path):
        if _matches(row, filters, rules):
            if len(rows) == limit:
                return rows, True
            rows.append({column: row.get(column) for column in columns})
    return rows, False


def _file_records(path: Path):
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            if path.suffix == ".csv":
                yield from csv.DictReader(handle)
            else:
                for number, line in enumerate(handle, 1):
                    if line.strip():
                        record = json.loads(line, parse_constant=_no_constant)
                        if not isinstance(record, dict):
                            raise ValueError(f"line {number} is not an object")
                        yield record
    except FileNotFoundError:
        raise ValidationError(f"the view's file {path.name} is missing") from None
    except (ValueError, UnicodeDecodeError, csv.Error, RecursionError) as error:
        raise ValidationError(f"the view's file {path.name} cannot be read: {str(error)[:200]}") from None


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON value")


def _table_rows(where, *, columns, filters, rules, limit) -> tuple[list[dict], bool]:
    from psycopg import sql

    alias, parts = where
    conditions, params = [], []
    # Compared as text, as a file's values are: a filter's type can never make the query fail.
    for column, value in filters.items():
        conditions.append(sql.SQL("{}::text = %s").format(sql.Identifier(column)))
        params.append(_as_text(value))
    for column, values in rules:
        conditions.append(sql.SQL("{}::text = ANY(%s)").format(sql.Identifier(column)))
        params.append([_as_text(value) for value in values])
    query = sql.SQL("SELECT {columns} FROM {table}{where} LIMIT %s").format(
        columns=sql.SQL(", ").join(sql.Identifier(c) for c in columns),
        table=sql.Identifier(*parts),
        where=sql.SQL(" WHERE ") + sql.SQL(" AND ").join(conditions) if conditions else sql.SQL(""))
    params.append(limit + 1)
    connection = connections[alias]
    try:
        # One SELECT of quoted identifiers (connect the alias as a role that may only SELECT), in a savepoint:
        # a source that fails (a column dropped, a table renamed) fails this read, not the transaction.
        with transaction.atomic(using=alias), connection.cursor() as cursor:
            cursor.execute(query.as_string(connection.connection), params)
            found = [dict(zip(columns, row)) for row in cursor.fetchall()]
    except DatabaseError as error:
        raise ValidationError(f"the view's table could not be read: {type(error).__name__}") from None
    return found[:limit], len(found) > limit


def _as_text(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def data_view_read(*, agent, view_name: str, filters=None, columns=None, limit=None, key=None, on_behalf_of=None,
                   idempotency_key: str | None = None, flow=None, purpose: str = ""):
    """A read through the gate: checked (bad input reads nothing and asks nothing), judged as `data.read` on
    the view's classification from Warden's registry, then served to the agent's clearance of this moment
    and completed. Returns (action, Rows or None when it was not allowed)."""
    from agents.models import Agent

    from .gate import request_action
    from .models import ActionOutcome

    view = DataView.objects.filter(name=view_name).first() if isinstance(view_name, str) else None
    clearance = Agent.objects.filter(pk=agent.pk).values_list("clearance", flat=True).get()
    asked = read_request_problem(view, clearance=clearance, filters=filters, columns=columns, limit=limit)
    context = {"filters": asked.filters, "columns": asked.columns, "limit": asked.limit}
    if purpose:
        context["purpose"] = purpose
    action = request_action(agent=agent, action="data.read", resource=view.name, context=context, key=key,
                            on_behalf_of=on_behalf_of, idempotency_key=idempotency_key, flow=flow)
    if action.outcome != ActionOutcome.ALLOWED or action.status != "decided":
        return action, None
    return action, data_view_serve(action=action, view=view, asked=asked, clearance=clearance)


def data_view_serve(*, action, view: DataView, asked: ReadRequest, clearance: int) -> Rows:
    """After an allowed data.read: the rows, and the action completed (failed, if the source let us down)."""
    from .gate import complete_action

    try:
        rows = read_rows(view, asked, clearance=clearance)
    except Exception:
        complete_action(action=action, status="failed", usage_source="warden")
        raise
    complete_action(action=action, status="succeeded", usage={"rows": len(rows.rows)}, usage_source="warden")
    return rows
