"""Configuration files validated by declaration (pydantic v2): the field types plumelink's TOML
files use, and the wording of their errors.

A field declares its type and range once (``Positive``, ``Count(1, 65535)``,
``Literal["step", "fly"]``) in a `Table` (unknown keys refused). `problems` turns pydantic's
errors into short sentences about one field each ("must be > 0, got -5"), which bench profiles
and scan files put behind their own file and field names. Checks that relate several fields
stay with the file that needs them.
"""

from __future__ import annotations

import math
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from annotated_types import Ge, Gt
from pydantic import AfterValidator, AllowInfNan, BaseModel, BeforeValidator, ConfigDict, Strict
from pydantic import ValidationError as ValidationError
from pydantic_core import PydanticCustomError

#: unknown keys are refused (``@pydantic.dataclasses.dataclass(frozen=True, config=STRICT_KEYS)``
#: for a table that code also builds directly)
STRICT_KEYS = ConfigDict(extra="forbid")


class Table(BaseModel):
    """One TOML table: its keys are the fields; any other key is an error. Never changes."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _fail(kind: str, text: str, value: object) -> PydanticCustomError:
    return PydanticCustomError(kind, text + ", got {got}", {"got": repr(value)})


def _is_real(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _text(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _fail("text", "must be a non-empty string", value)
    return value


def _pair(value: object) -> tuple[float, float]:
    if not (isinstance(value, list | tuple) and len(value) == 2 and all(map(_is_real, value))):
        raise _fail("pair", "must be a list of two numbers [x, y]", value)
    return float(value[0]), float(value[1])


def _positive_pair(value: tuple[float, float]) -> tuple[float, float]:
    if not all(v > 0 for v in value):
        raise _fail("pair", "must have both values > 0", list(value))
    return value


Number = Annotated[float, Strict(), AllowInfNan(False)]  # an int or a float, finite
Positive = Annotated[Number, Gt(0)]
NonNegative = Annotated[Number, Ge(0)]
Integer = Annotated[int, Strict()]
Flag = Annotated[bool, Strict()]
String = Annotated[str, Strict()]
Text = Annotated[str, BeforeValidator(_text)]  # a string with more than blanks
Pair = Annotated[tuple[float, float], BeforeValidator(_pair)]
PositivePair = Annotated[tuple[float, float], BeforeValidator(_pair),
                         AfterValidator(_positive_pair)]


def Count(lo: int, hi: int | None = None) -> Any:
    """An integer in lo..hi (no upper bound when ``hi`` is None)."""
    def check(value: int) -> int:
        if value < lo or (hi is not None and value > hi):
            raise _fail("range", f"must be in {lo}..{hi}" if hi is not None
                        else f"must be >= {lo}", value)
        return value

    return Annotated[int, Strict(), AfterValidator(check)]


def Within(lo: float, hi: float, unit: str = "") -> Any:
    """A number in lo..hi (``unit`` only for the message)."""
    span = f"{lo:g}..{hi:g}" + (f" {unit}" if unit else "")

    def check(value: float) -> float:
        if not lo <= value <= hi:
            raise PydanticCustomError("range", "must be in {span}, got {got}",
                                      {"span": span, "got": f"{value:g}"})
        return value

    return Annotated[Number, AfterValidator(check)]


def checked(kind: str, test: Callable[[Any], bool], rule: str) -> AfterValidator:
    """A rule of its own for one field: ``test(value)``, else "<rule>, got <value>"."""
    def check(value: Any) -> Any:
        if not test(value):
            raise _fail(kind, rule, value)
        return value

    return AfterValidator(check)


# ---------------------------------------------------------------------------- errors
@dataclass(frozen=True)
class Problem:
    """One field's problem: ``loc`` its path, ``kind`` "missing", "unknown" (a key the table
    does not have) or "invalid", ``text`` what is wrong ("must be > 0, got -5")."""

    loc: tuple[str, ...]
    kind: str
    text: str

    @property
    def dotted(self) -> str:
        return ".".join(self.loc)


_WORDS = {
    "float_type": "must be a number", "finite_number": "must be a number",
    "int_type": "must be an integer", "int_from_float": "must be an integer",
    "bool_type": "must be true or false", "string_type": "must be a string",
    "model_type": "must be a table", "dict_type": "must be a table",
    "dataclass_type": "must be a table", "model_attributes_type": "must be a table",
}
_BOUNDS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<",
           "less_than_equal": "<="}


def problems(error: ValidationError) -> list[Problem]:
    """Each error of ``error`` as a `Problem`, in pydantic's order (fields as declared)."""
    out = []
    for e in error.errors(include_url=False):
        loc = tuple(str(part) for part in e["loc"])
        kind, got = e["type"], e.get("input")
        ctx = e.get("ctx") or {}
        if kind == "missing":
            out.append(Problem(loc, "missing", "is missing"))
        elif kind in ("extra_forbidden", "unexpected_keyword_argument"):
            out.append(Problem(loc, "unknown", "is not a known key"))
        elif kind in _BOUNDS:
            bound = next(iter(ctx.values()))
            out.append(Problem(loc, "invalid", f"must be {_BOUNDS[kind]} {bound:g}, got {got!r}"))
        elif kind == "literal_error":
            choices = ctx["expected"].rsplit(" or ", 1)
            out.append(Problem(loc, "invalid", f"must be one of {', '.join(choices)}, "
                                               f"got {got!r}"))
        elif kind in _WORDS:
            out.append(Problem(loc, "invalid", f"{_WORDS[kind]}, got {got!r}"))
        else:  # our own rules (PydanticCustomError) and anything else pydantic says
            out.append(Problem(loc, "invalid", e["msg"]))
    return out


def table_at(schema: type, loc: tuple[str, ...]) -> type | None:
    """The schema class of the table at ``loc``, None where ``loc`` names no table.

    Follows fields declared as a table, ``Table | None`` or ``dict[str, Table]`` (whose next
    part is a key)."""
    node: Any = schema
    keyed = False
    for part in loc:
        if keyed:  # a key of a dict of tables: the node is already the tables' class
            keyed = False
            continue
        fields = getattr(node, "__pydantic_fields__", {})
        if part not in fields:
            return None
        node, keyed = _table_of(fields[part].annotation)
        if node is None:
            return None
    return None if keyed else node


def is_table(schema: type, loc: tuple[str, ...]) -> bool:
    """Whether ``loc`` names a table: a table field, a dict of tables or one of its tables."""
    if not loc or table_at(schema, loc) is not None:
        return True
    fields = getattr(table_at(schema, loc[:-1]), "__pydantic_fields__", {})
    return loc[-1] in fields and _table_of(fields[loc[-1]].annotation)[0] is not None


def keys_of(table: type) -> list[str]:
    """The keys a table allows, sorted."""
    return sorted(table.__pydantic_fields__)  # type: ignore[attr-defined]


def _table_of(annotation: Any) -> tuple[Any, bool]:
    """(table class or None, whether the annotation is a dict of such tables)."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _table_of(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _table_of(options[0]) if len(options) == 1 else (None, False)
    if origin is dict:
        return _table_of(typing.get_args(annotation)[1])[0], True
    declared = getattr(annotation, "__pydantic_fields__", None) is not None
    return (annotation if declared else None), False


__all__ = [
    "STRICT_KEYS",
    "Count",
    "Flag",
    "Integer",
    "NonNegative",
    "Number",
    "Pair",
    "Positive",
    "PositivePair",
    "Problem",
    "String",
    "Table",
    "Text",
    "ValidationError",
    "Within",
    "checked",
    "is_table",
    "keys_of",
    "problems",
    "table_at",
]
