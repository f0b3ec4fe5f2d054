"""The label schema: the fields annotators label and their allowed values.

Stored in the label db (tables ``label_fields`` / ``label_values``); :func:`read_schema` and
:func:`write_schema` move it in and out of an open connection, :func:`with_field` and
:func:`with_value` are the pure edits behind ``LabelStore.add_field`` / ``add_value``; they
refuse a name or value :func:`labeler.labels.names.check_label_name` refuses (export names a
folder after each value), so none enters the store.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field

from labeler.errors import InputError, UnknownKeyError
from labeler.labels.names import check_label_name

MASK_STATES = ("correct", "nose_exposed", "chin_exposed", "on_chin", "no_mask")


@dataclass(frozen=True)
class LabelField:
    """One label field, e.g. ``mask_state`` with its allowed values (display order)."""

    name: str
    values: tuple[str, ...]
    optional: bool = False
    description: str = ""


@dataclass(frozen=True)
class LabelSchema:
    """The fields annotators label; stored in the label db (tables label_fields/label_values)."""

    fields: tuple[LabelField, ...] = field(default_factory=tuple)

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.fields]

    def get(self, name: str) -> LabelField:
        for f in self.fields:
            if f.name == name:
                return f
        raise UnknownKeyError(
            f"label field {name!r} is not in the schema (fields: {', '.join(self.names)}); "
            "add it in the app's Settings page or with LabelStore.add_field"
        )

    def values(self, name: str) -> tuple[str, ...]:
        return self.get(name).values


DEFAULT_SCHEMA = LabelSchema(
    (
        LabelField("mask_state", MASK_STATES, False, "how the mask is worn"),
        LabelField("gender", ("female", "male"), True, "optional"),
        LabelField("age_band", ("child", "teen", "adult", "senior"), True, "optional"),
    )
)


def with_field(
    schema: LabelSchema,
    name: str,
    values: Iterable[str],
    *,
    optional: bool = True,
    description: str = "",
) -> LabelSchema:
    """``schema`` plus a new field ``name`` with ``values`` (duplicates dropped, order kept);
    the name and every value pass :func:`~labeler.labels.names.check_label_name`."""
    name = check_label_name(name, "field")
    vals = tuple(dict.fromkeys(check_label_name(v, "value") for v in values))
    if name in schema.names:
        raise InputError(f"label field {name!r} already exists; add values to it instead")
    return LabelSchema((*schema.fields, LabelField(name, vals, optional, description)))


def with_value(schema: LabelSchema, field_name: str, value: str) -> LabelSchema:
    """``schema`` with ``value`` appended to field ``field_name`` (unchanged if present); the
    value passes :func:`~labeler.labels.names.check_label_name`."""
    value = check_label_name(value, "value")
    if value in schema.get(field_name).values:
        return schema
    return LabelSchema(
        tuple(
            LabelField(x.name, (*x.values, value), x.optional, x.description)
            if x.name == field_name
            else x
            for x in schema.fields
        )
    )


def read_schema(con: sqlite3.Connection) -> LabelSchema:
    fields = con.execute(
        "SELECT field, optional, description FROM label_fields ORDER BY position"
    ).fetchall()
    values: dict[str, list[str]] = {}
    for f, v in con.execute("SELECT field, value FROM label_values ORDER BY field, position"):
        values.setdefault(f, []).append(v)
    return LabelSchema(
        tuple(LabelField(f, tuple(values.get(f, [])), bool(o), d) for f, o, d in fields)
    )


def write_schema(con: sqlite3.Connection, schema: LabelSchema) -> None:
    """Add ``schema``'s rows (the caller deletes the old ones first when replacing)."""
    con.executemany(
        "INSERT OR REPLACE INTO label_fields(field, position, optional, description) "
        "VALUES (?, ?, ?, ?)",
        [(f.name, i, int(f.optional), f.description) for i, f in enumerate(schema.fields)],
    )
    con.executemany(
        "INSERT OR REPLACE INTO label_values(field, value, position) VALUES (?, ?, ?)",
        [(f.name, v, i) for f in schema.fields for i, v in enumerate(f.values)],
    )
