"""Turning a pydantic validation error of params.yaml into one line: the file, the key, what was
wrong and how to fix it (the fix a field declares with `expect` in src/config/schema.py)."""

from __future__ import annotations

from typing import Any, Optional, Union, get_args, get_origin

from pydantic import BaseModel


class CrossField(ValueError):
    """A check across fields, reported against `key` of its section."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


def _first_error(errors: list[dict]) -> dict:
    """The first error; for a value no member of a Union accepts (one error per member, its type
    last in `loc`), the number's error (the broadest message) at the field's own place."""
    first = errors[0]
    if first["loc"] and first["loc"][-1] in ("bool", "int", "float", "str"):
        members = [e for e in errors if e["loc"][:-1] == first["loc"][:-1]]
        first = next((e for e in members if e["loc"][-1] == "float"), first)
        first = {**first, "loc": first["loc"][:-1]}
    elif len(errors) > 1 and all(e["loc"][:-1] == first["loc"][:-1] for e in errors) and first["loc"]:
        # a Union of a choice and a number (train.num_threads: "auto" or a count): say what it takes
        first = {"type": "union", "loc": first["loc"][:-1], "input": first.get("input")}
    return first


def one_line(cls: type[BaseModel], errors: list[dict], source: str, prefix: str = "", top_level: bool = False) -> str:
    """A pydantic error as `<file>: <section.key>: <what was wrong>; <how to fix it>`.

    top_level: `cls` is the whole file, whose unknown keys are sections."""
    error = _first_error(errors)
    loc = [str(p) for p in error["loc"]]
    value, kind = error.get("input"), error["type"]
    cross = error.get("ctx", {}).get("error")
    if isinstance(cross, CrossField):
        loc, what = loc + [cross.key], str(cross)
    elif kind == "extra_forbidden":
        known = list(_owner(cls, loc[:-1]).model_fields)
        if top_level and len(loc) == 1:
            return f"{source}: unknown section {loc[0]!r}; known sections: {', '.join(known)}"
        close = [n for n in known if n.startswith(loc[-1][:3])]
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        what = f"unknown key{hint}; known keys: {', '.join(known)}"
    else:
        what = _what(kind, value, error, _expected(cls, loc))
    key = ".".join(([prefix] if prefix else []) + [p for p in loc if not p.isdigit()])
    key += "".join(f"[{p}]" for p in loc if p.isdigit())  # list items: tune.enqueue[0]
    return f"{source}: {key}: {what}" if source else f"{key}: {what}"


def _what(kind: str, value: Any, error: dict, expected: Optional[str]) -> str:
    got = "got null" if value is None else f"got {kind_of(value)} {value!r}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"expected a mapping of keys, got {kind_of(value)}"
    if kind == "literal_error":
        return f"{value!r} is not one of {error['ctx']['expected'].replace(' or ', ' | ').replace(', ', ' | ')}"
    if kind in ("int_type", "int_from_float"):
        return f"expected an integer, {got}"
    if kind == "bool_type":
        return f"expected true or false, {got}"
    if kind == "string_type":
        return f"expected a string, {got}; quote it"
    if kind in ("float_type", "finite_number"):
        if kind == "float_type" and isinstance(value, str) and _looks_numeric(value):
            return (
                f"expected a number, {got}; YAML reads {value} as a string because it has no dot in the"
                f" mantissa: write {yaml_float(value)}"
            )
        if kind == "finite_number":
            return f"expected a finite number, {got}" + (f"; use {expected}" if expected else "")
        return f"expected a number, {got}"
    if kind == "union":
        return f"expected {expected}, {got}"
    if kind == "list_type":
        return f"expected a list, e.g. [128, 256], {got}"
    return f"{value!r} is out of range; expected {expected or error['msg'].lower()}"


def _owner(cls: type[BaseModel], loc: list[str]) -> type[BaseModel]:
    """The section class at `loc` (a path of field names) below `cls`."""
    keyed = False  # the previous name was a dict[str, Section] field: this name is one of its keys
    for name in loc:
        if keyed:
            keyed = False
            continue
        field = cls.model_fields.get(name)
        annotation = getattr(field, "annotation", None)
        if get_origin(annotation) is dict:  # e.g. tune.space: {key: Dimension}
            annotation, keyed = get_args(annotation)[1], True
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            break
        cls = annotation
    return cls


def _expected(cls: type[BaseModel], loc: list[str]) -> Optional[str]:
    """The field's declared fix (_expect), for the outermost field named in `loc`."""
    names = [p for p in loc if not p.isdigit()]
    owner = _owner(cls, names[:-1]) if names else cls
    for name in reversed(names):
        field = owner.model_fields.get(name)
        if field is not None:
            extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
            if "expect" in extra:
                return str(extra["expect"])
            for meta in field.metadata:
                extra = getattr(meta, "json_schema_extra", None)
                if isinstance(extra, dict) and "expect" in extra:
                    return str(extra["expect"])
    return None


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def yaml_float(value: Union[float, str]) -> str:
    """A number as YAML reads a float, exactly (a float's repr): 3e-3 -> 3.0e-3, 1e-05 -> 1.0e-05,
    "3" -> 3.0 (YAML 1.1, as PyYAML and `dvc exp run -S` read it, needs a dot in the mantissa)."""
    text = repr(value) if isinstance(value, float) else str(value).strip()
    mantissa, e, exponent = text.lower().partition("e")
    if "." not in mantissa and any(c.isdigit() for c in mantissa):  # not inf, nan
        mantissa += ".0"
    return mantissa + e + exponent


def kind_of(value: Any) -> str:
    """A YAML value's kind as a user names it: string, integer, number, boolean, list, mapping."""
    return {str: "string", int: "integer", float: "number", bool: "boolean", list: "list", dict: "mapping"}.get(
        type(value), type(value).__name__
    )
