"""Pydantic models of the span JSON that OpenTelemetry's ``ReadableSpan.to_json()`` prints.

`OtelSpan` mirrors one line of a ``spans.jsonl`` file field by field, so a caller can
validate a line strictly (`OtelSpan.model_validate_json`) and get typed access to every
part of it, the resource and events included. The reader does not use it per line: at a
million spans a full model costs about twice what the reader needs, so the reader
validates a narrower view, `WIRE_SPAN` (same pydantic machinery, only the fields the
analysis uses, other keys skipped) and turns it into a compact `SpanRecord`.

Example line (one line in the file)::

    {"name": "task", "context": {"trace_id": "0xb40a...", "span_id": "0xa236...",
     "trace_state": "[]"}, "kind": "SpanKind.INTERNAL", "parent_id": null,
     "start_time": "2026-11-23T04:33:46.500552Z", "end_time": "2026-11-23T04:33:46.500879Z",
     "status": {"status_code": "UNSET"}, "attributes": {...}, "events": [], "links": [],
     "resource": {"attributes": {...}, "schema_url": ""}}
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic_core import SchemaValidator, core_schema

#: ``0x``-prefixed lowercase hex, as the SDK formats trace and span ids
HexId = Annotated[str, Field(pattern=r"^0x[0-9a-fA-F]{1,32}$")]
AttributeValue = str | bool | int | float | list[str] | list[bool] | list[int] | list[float]
StatusCode = Literal["UNSET", "OK", "ERROR"]


class _Model(BaseModel):
    # Extra keys are kept, not rejected: a newer SDK adding a field must not make old
    # analyzers drop every span.
    model_config = ConfigDict(frozen=True, extra="allow")


class OtelContext(_Model):
    """``context``: the span's identity within its trace."""

    trace_id: HexId
    span_id: HexId
    trace_state: str = "[]"


class OtelStatus(_Model):
    """``status``: UNSET / OK / ERROR, with an optional description on errors."""

    status_code: StatusCode = "UNSET"
    description: str | None = None


class OtelEvent(_Model):
    """One entry of ``events``: a timestamped point inside a span."""

    name: str
    timestamp: datetime
    attributes: dict[str, AttributeValue] = {}


class OtelLink(_Model):
    """One entry of ``links``: a reference to a span in this or another trace."""

    context: OtelContext
    attributes: dict[str, AttributeValue] = {}


class OtelResource(_Model):
    """``resource``: who produced the span (service, host, SDK version)."""

    attributes: dict[str, AttributeValue] = {}
    schema_url: str = ""


class OtelSpan(_Model):
    """One span, exactly as ``ReadableSpan.to_json()`` writes it."""

    name: str
    context: OtelContext
    kind: str = "SpanKind.INTERNAL"
    parent_id: HexId | None = None
    start_time: datetime
    end_time: datetime
    status: OtelStatus = OtelStatus()
    attributes: dict[str, AttributeValue] = {}
    events: list[OtelEvent] = []
    links: list[OtelLink] = []
    resource: OtelResource = OtelResource()

    @property
    def start_seconds(self) -> float:
        """Start as float epoch seconds (UTC assumed when the string carries no zone)."""
        return _as_utc(self.start_time).timestamp()

    @property
    def end_seconds(self) -> float:
        """End as float epoch seconds (UTC assumed when the string carries no zone)."""
        return _as_utc(self.end_time).timestamp()


def _as_utc(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


# --- the narrow view the reader validates per line ---------------------------------------
#
# What `TypeAdapter(SomeTypedDict)` compiles to, written as a pydantic-core schema directly:
# pydantic refuses `typing.TypedDict` before Python 3.12 and the analyzer may not import
# typing_extensions. Validation runs in Rust: the JSON is parsed once, keys outside the
# schema (resource, events, links) are skipped without building Python objects for them.

_STR = core_schema.str_schema()
_NULLABLE_STR = core_schema.nullable_schema(_STR)


def _field(schema: core_schema.CoreSchema) -> core_schema.TypedDictField:
    return core_schema.typed_dict_field(schema)


def _default(schema: core_schema.CoreSchema, value: object) -> core_schema.TypedDictField:
    # Optional keys come back with a default, so the reader indexes instead of calling .get
    return core_schema.typed_dict_field(core_schema.with_default_schema(schema, default=value))


WIRE_SPAN_SCHEMA = core_schema.typed_dict_schema(
    {
        "name": _field(_STR),
        "context": _field(core_schema.typed_dict_schema({"trace_id": _field(_STR), "span_id": _field(_STR)})),
        "parent_id": _default(_NULLABLE_STR, None),
        "start_time": _field(_STR),
        "end_time": _field(_STR),
        "status": _default(
            core_schema.typed_dict_schema(
                {"status_code": _default(_STR, "UNSET"), "description": _default(_NULLABLE_STR, None)}
            ),
            {"status_code": "UNSET", "description": None},
        ),
        "attributes": _default(core_schema.dict_schema(_STR, core_schema.any_schema()), {}),
    }
)

# Keys repeat on every line and are worth caching as Python strings; values (ids, times)
# are mostly unique, and caching them only churns the cache.
_CONFIG = core_schema.CoreConfig(cache_strings="keys")
#: ``WIRE_SPAN.validate_json(line)`` -> dict with exactly the keys above (defaults filled in)
WIRE_SPAN = SchemaValidator(WIRE_SPAN_SCHEMA, _CONFIG)
#: a JSON array of spans at once (the reader joins a block of lines into one)
WIRE_SPAN_LIST = SchemaValidator(core_schema.list_schema(WIRE_SPAN_SCHEMA), _CONFIG)
