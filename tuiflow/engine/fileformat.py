"""The workflow file format: its fields (pydantic models, `json_schema` for editors), and
what is wrong with a field said in words a person can act on: the type expected ("a
command string or a list of strings"), the range of a number, the nearest known field for
an unknown one ("did you mean 'depends_on'?"). `tuiflow.engine.compiler` validates with it.
"""

from __future__ import annotations

import difflib
import types
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tuiflow.engine.expr import clip
from tuiflow.engine.model import (
    MAX_BACKOFF,
    MAX_GPUS,
    MAX_PRIORITY,
    MAX_RETRIES,
    MAX_TIMEOUT,
    MIN_PRIORITY,
)


# ------------------------------------------------------------------- the file format
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, strict=False)


# Numbers are strict (no "5" for 5, no true for 1) and range-checked (see model.py).
Priority = Annotated[int, Field(strict=True, ge=MIN_PRIORITY, le=MAX_PRIORITY)]
Gpus = Annotated[int, Field(strict=True, ge=0, le=MAX_GPUS)]
Retries = Annotated[int, Field(strict=True, ge=0, le=MAX_RETRIES)]
Timeout = Annotated[float, Field(strict=True, gt=0, le=MAX_TIMEOUT, allow_inf_nan=False)]
Backoff = Annotated[float, Field(strict=True, ge=0, le=MAX_BACKOFF, allow_inf_nan=False)]
EnvValue = str | int | float | bool


class Defaults(_Strict):
    queue: str | None = None
    num_retries: Retries | None = None
    timeout: Timeout | None = None
    retry_backoff: Backoff | None = None
    gpus: Gpus | None = None
    env: dict[str, EnvValue] | None = None
    cwd: str | None = None
    priority: Priority | None = None


class TaskModel(_Strict):
    name: str
    depends_on: list[str] = []
    dep_policy: Literal["all", "any"] = "all"
    condition: str | None = None
    run: str | list[str] | None = None
    call: str | None = None
    kwargs: dict[str, Any] = {}
    executor: str | None = None
    with_: dict[str, Any] = Field(default_factory=dict, alias="with")
    foreach: list[Any] | dict[str, Any] | str | None = None
    queue: str | None = None
    gpus: Gpus | None = None
    env: dict[str, EnvValue] | None = None
    cwd: str | None = None
    timeout: Timeout | None = None
    num_retries: Retries | None = None
    retry_backoff: Backoff | None = None
    priority: Priority | None = None


class WorkflowModel(_Strict):
    name: str
    description: str | None = None
    params: dict[str, Any] = {}
    defaults: Defaults = Defaults()
    tasks: list[Any] = Field(min_length=1)  # each task is checked on its own (TaskModel)


def json_schema() -> dict[str, Any]:
    """JSON Schema of workflow files (for editors: `tuiflow schema`)."""
    schema = WorkflowModel.model_json_schema(by_alias=True)
    schema["properties"]["tasks"]["items"] = {"$ref": "#/$defs/TaskModel"}
    schema.setdefault("$defs", {})["TaskModel"] = TaskModel.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "tuiflow workflow"
    return schema


# ------------------------------------------------------------ errors a person can act on
#: what a field takes, in words, where the type alone says too little
_EXPECTED = {
    "run": "a command string or a list of strings (argv)",
    "foreach": 'a list, {range: ...} or a "{{ params.x }}" string',
    "priority": f"a whole number from {MIN_PRIORITY} to {MAX_PRIORITY} (higher runs first)",
    "gpus": f"a whole number from 0 to {MAX_GPUS}",
    "num_retries": f"a whole number from 0 to {MAX_RETRIES}",
    "timeout": f"a number of seconds above 0, at most {MAX_TIMEOUT:.0f} (30 days)",
    "retry_backoff": f"a number of seconds from 0 to {MAX_BACKOFF:.0f} (1 day)",
    "tasks": "a list of at least one task",
}
_WORDS: dict[Any, tuple[str, str]] = {  # type: (one, several)
    str: ("a string", "strings"),
    int: ("a whole number", "whole numbers"),
    float: ("a number", "numbers"),
    bool: ("true/false", "true/false"),
    Any: ("any value", "values"),
}


def _words(tp: Any, plural: bool = False) -> str:
    """A type annotation in words: ``list[str] | None`` is "a list of strings"."""
    origin, args = get_origin(tp), get_args(tp)
    if origin is Annotated:
        return _words(args[0], plural)
    if origin in (Union, types.UnionType):
        # a whole number is a number: "a string, a number or true/false"
        parts = [_words(a, plural) for a in args if a is not type(None) and not (a is int and float in args)]
        return ", ".join(parts[:-1]) + " or " + parts[-1] if len(parts) > 1 else parts[0]
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is list:
        return f"{'lists' if plural else 'a list'} of {_words(args[0], True)}"
    if origin is dict:
        return f"{'mappings' if plural else 'a mapping'} of names to {_words(args[1], True)}"
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return "mappings" if plural else "a mapping"
    return _WORDS.get(tp, (getattr(tp, "__name__", str(tp)),) * 2)[plural]


def described(value: Any) -> str:
    """What a value is, in words, for "expected ..., got ..." (the user's text clipped)."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"the number {int_text(value)}"
    if isinstance(value, float):
        return f"the number {value!r}"
    if isinstance(value, str):
        return f"the string {clip(value, 40)!r}"
    if isinstance(value, list | tuple):
        return "a list" if value else "an empty list"
    if isinstance(value, dict):
        return "a mapping" if value else "an empty mapping"
    return f"a {type(value).__name__} ({clip(str(value), 40)})"


def int_text(value: int) -> str:
    # str() of an integer of more than 4,300 digits raises (Python's limit): say its size
    return clip(str(value), 40) if value.bit_length() < 1000 else f"of {value.bit_length():,} bits"


def _fits(tp: Any, value: Any) -> bool:
    """Whether `value` has the shape of `tp` at its top level (its items are not looked at)."""
    origin = get_origin(tp)
    if origin is Annotated:
        return _fits(get_args(tp)[0], value)
    if origin in (Union, types.UnionType):
        return any(_fits(a, value) for a in get_args(tp))
    if origin is Literal:
        return value in get_args(tp)
    if tp is Any:
        return True
    if tp is type(None):
        return value is None
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return isinstance(value, dict)
    return isinstance(value, origin or tp)


def _mismatch(tp: Any, value: Any, where: str = "") -> tuple[str, str, Any] | None:
    """(where below the field, what was expected there, the value there) for the first part
    of `value` that does not fit `tp`; None if the shapes fit (a range may still be off)."""
    origin, args = get_origin(tp), get_args(tp)
    if origin is Annotated:
        return _mismatch(args[0], value, where)
    if origin in (Union, types.UnionType):
        for member in args:
            if _fits(member, value):
                return _mismatch(member, value, where)
        return where, _words(tp), value
    if not _fits(tp, value):
        return where, _words(tp), value
    if origin is list:
        for i, item in enumerate(value):
            if (found := _mismatch(args[0], item, f"{where}[{i}]")) is not None:
                return found
    elif origin is dict:
        for key, item in value.items():
            if not isinstance(key, str):
                return where, "names (strings) as keys", key
            if (found := _mismatch(args[1], item, f"{where}.{key}")) is not None:
                return found
    return None


def _known_fields(model: type[BaseModel]) -> list[str]:
    return [f.alias or name for name, f in model.model_fields.items()]


def _unknown_field(key: str, model: type[BaseModel]) -> str:
    known = _known_fields(model)
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.7)
    if close:
        return f"unknown field; did you mean {close[0]!r}?"
    if model is Defaults and key in _known_fields(TaskModel):
        return f"{key!r} cannot be given under defaults (only {', '.join(known)})"
    return f"unknown field (known: {', '.join(known)})"


def model_problems(
    error: ValidationError, model: type[BaseModel], raw: dict[str, Any]
) -> list[tuple[str, str]]:
    """(field, message) for each field of `raw` that `model` refused, in words a person can
    act on: one message per field, however many members of a union pydantic tried."""
    fields = {f.alias or name: f for name, f in model.model_fields.items()}
    errors: dict[str, list[Any]] = {}
    for err in error.errors():
        errors.setdefault(str(err["loc"][0]) if err["loc"] else "", []).append(err)
    out: list[tuple[str, str]] = []
    for key, errs in errors.items():
        kind = errs[0]["type"] if len(errs[0]["loc"]) == 1 else "below"
        if kind == "extra_forbidden":
            out.append((key, _unknown_field(key, model)))
        elif kind == "missing":
            out.append((key, "required field is missing"))
        elif key not in fields:
            out.append((key, errs[0]["msg"]))
        else:
            out.extend(_field_problems(key, fields[key].annotation, raw.get(key), errs))
    return out


def _field_problems(key: str, tp: Any, value: Any, errs: list[Any]) -> list[tuple[str, str]]:
    sub = tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None
    if sub is not None and isinstance(value, dict):  # defaults: name its own fields
        try:
            sub.model_validate(value)
        except ValidationError as e:
            return [(f"{key}.{field}", msg) for field, msg in model_problems(e, sub, value)]
    where, expected, part = _mismatch(tp, value) or ("", None, value)
    if not where:
        expected = _EXPECTED.get(key, expected)
    if expected is None:  # a constraint without words of ours: pydantic's own message
        return [(key, errs[0]["msg"])]
    return [(key + where, f"expected {expected}, got {described(part)}")]
