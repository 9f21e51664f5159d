"""Parsing and validation of ``POST /predict`` bodies against the model signature.

A body is one JSON record, a JSON list of records, or CSV with a header row. Each record
must contain every signature input. Double columns take numbers (JSON ints are widened) or
null, and string columns take strings or null. In CSV an empty field is null, and a
double field is parsed as a number. Every invalid value becomes one 422 detail entry
naming the record index, the field and the value. Unknown fields are ignored and counted.
A body with more records than the configured limit gets 413, and an unknown content type
415.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

# Signature column types the request parser accepts, by MLflow DataType name.
NUMBER_TYPES = frozenset({"double", "float"})
STRING_TYPES = frozenset({"string"})

# The optional pass-through id of a record. The monitoring store column is String(64).
FLIGHT_ID_FIELD = "flight_id"
MAX_FLIGHT_ID_LENGTH = 64

# A 422 response lists at most this many invalid values, so a large bad batch does not
# produce an even larger error body.
MAX_REPORTED_ERRORS = 50


@dataclasses.dataclass(frozen=True)
class InputColumn:
    """One model input column from the signature: its name and MLflow type name."""

    name: str
    type: str


# Media types of ``POST /predict`` bodies. A request without a Content-Type is read as JSON.
JSON_MEDIA_TYPES = frozenset({"application/json", ""})
CSV_MEDIA_TYPES = frozenset({"text/csv", "application/csv"})


class RequestValidationFailed(ValueError):
    """The request body cannot be scored. ``errors`` is the response detail.

    ``status_code`` is 422 for values that do not match the signature, 413 for a body over
    a size limit and 415 for an unsupported content type.
    """

    def __init__(self, errors: list[dict[str, Any]], records: int = 0, status_code: int = 422):
        super().__init__(f"{len(errors)} problem(s) in the request")
        self.errors = errors
        self.records = records
        self.status_code = status_code


@dataclasses.dataclass(frozen=True)
class ParsedRequest:
    """Records reduced to the signature inputs, their flight ids and the ignored field count."""

    records: list[dict[str, Any]]
    flight_ids: list[str | None]
    ignored_fields: int


def parse_request(
    body: bytes,
    inputs: Sequence[InputColumn],
    content_type: str = "application/json",
    max_records: int | None = None,
) -> ParsedRequest:
    """Parse a body of JSON or CSV records and check it against the signature.

    Every record must contain every input column, null included: a misspelled field is
    then reported as missing instead of being silently imputed. Numbers for double columns
    are widened to float. Fields outside the signature, other than ``flight_id``, are
    ignored and counted. Raises ``RequestValidationFailed`` listing each invalid value
    with its location ``["body", record index, field]``; a single JSON object is record 0,
    and the first CSV row after the header is record 0.
    """
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type in CSV_MEDIA_TYPES:
        payload: Any = _csv_records(body, inputs)
    elif media_type in JSON_MEDIA_TYPES or media_type.endswith("+json"):
        try:
            payload = json.loads(body)
        except (ValueError, RecursionError) as error:
            raise RequestValidationFailed(
                [{"type": "json_invalid", "loc": ["body"], "msg": f"invalid JSON: {error}"}]
            ) from None
    else:
        raise RequestValidationFailed(
            [
                {
                    "type": "unsupported_media_type",
                    "loc": ["header", "content-type"],
                    "msg": f"content type {content_type!r} is not supported; send application/json or text/csv",
                    "input": content_type,
                }
            ],
            status_code=415,
        )

    if isinstance(payload, dict):
        payload = [payload]
    elif not isinstance(payload, list):
        raise RequestValidationFailed(
            [
                {
                    "type": "invalid_type",
                    "loc": ["body"],
                    "msg": "body must be a JSON object (one record) or a non-empty list of objects, "
                    f"got {_json_type(payload)}",
                    "input": _json_safe(payload),
                }
            ]
        )
    if not payload:
        raise RequestValidationFailed(
            [{"type": "too_short", "loc": ["body"], "msg": "the list of records is empty; send at least one record"}]
        )
    if max_records is not None and len(payload) > max_records:
        raise RequestValidationFailed(
            [
                {
                    "type": "too_many_records",
                    "loc": ["body"],
                    "msg": f"the request has {len(payload)} records, more than the limit "
                    f"serving.max_records = {max_records}; split it into requests of at most "
                    f"{max_records} records",
                    "input": len(payload),
                }
            ],
            records=len(payload),
            status_code=413,
        )

    known = {column.name for column in inputs} | {FLIGHT_ID_FIELD}
    errors: list[dict[str, Any]] = []
    records: list[dict[str, Any]] = []
    flight_ids: list[str | None] = []
    ignored_fields = 0
    for index, raw in enumerate(payload):
        if not isinstance(raw, dict):
            errors.append(
                {
                    "type": "dict_type",
                    "loc": ["body", index],
                    "msg": f"record {index} must be a JSON object, got {_json_type(raw)}",
                    "input": _json_safe(raw),
                }
            )
            continue
        ignored_fields += sum(1 for field in raw if field not in known)
        flight_ids.append(_flight_id(raw, index, errors))
        records.append(_record_values(raw, index, inputs, errors))

    if errors:
        reported = errors[:MAX_REPORTED_ERRORS]
        if len(errors) > MAX_REPORTED_ERRORS:
            reported.append(
                {
                    "type": "too_many_errors",
                    "loc": ["body"],
                    "msg": f"{len(errors) - MAX_REPORTED_ERRORS} more invalid values are not listed",
                }
            )
        raise RequestValidationFailed(reported, records=len(payload))
    return ParsedRequest(records=records, flight_ids=flight_ids, ignored_fields=ignored_fields)


def _record_values(
    raw: Mapping[str, Any], index: int, inputs: Sequence[InputColumn], errors: list[dict[str, Any]]
) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for column in inputs:
        location = ["body", index, column.name]
        if column.name not in raw:
            errors.append(
                {
                    "type": "missing",
                    "loc": location,
                    "msg": f"field {column.name!r} is missing; send every model input field, "
                    "with null for an unknown value",
                }
            )
            continue

        value = raw[column.name]
        if value is None:
            values[column.name] = None
        elif column.type in NUMBER_TYPES:
            number = _finite_float(value)
            if number is None:
                errors.append(
                    {
                        "type": "float_type",
                        "loc": location,
                        "msg": f"field {column.name!r} must be a number or null, got {_json_type(value)}",
                        "input": _json_safe(value),
                    }
                )
            values[column.name] = number
        elif isinstance(value, str):
            values[column.name] = value
        else:
            errors.append(
                {
                    "type": "string_type",
                    "loc": location,
                    "msg": f"field {column.name!r} must be a string or null, got {_json_type(value)}",
                    "input": _json_safe(value),
                }
            )
    return values


def _csv_records(body: bytes, inputs: Sequence[InputColumn]) -> list[dict[str, Any]]:
    """Read CSV with a header row into records: empty fields become None, double fields numbers.

    A double field that is not a number stays a string, so the record check reports it
    with its value. A row whose length differs from the header is reported by its index.
    """
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise RequestValidationFailed(
            [{"type": "csv_invalid", "loc": ["body"], "msg": f"CSV must be UTF-8: {error}"}]
        ) from None
    try:
        rows = [row for row in csv.reader(io.StringIO(text, newline=""), strict=True) if row]
    except csv.Error as error:
        raise RequestValidationFailed([{"type": "csv_invalid", "loc": ["body"], "msg": f"invalid CSV: {error}"}]) from None
    if not rows:
        raise RequestValidationFailed(
            [{"type": "too_short", "loc": ["body"], "msg": "the CSV body is empty; send a header row and at least one record"}]
        )

    header = [name.strip() for name in rows[0]]
    duplicated = sorted({name for name in header if header.count(name) > 1})
    if duplicated:
        raise RequestValidationFailed(
            [{"type": "csv_invalid", "loc": ["body"], "msg": f"the CSV header repeats columns {duplicated}"}]
        )
    numbers = {column.name for column in inputs if column.type in NUMBER_TYPES}
    records: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    for index, row in enumerate(rows[1:]):
        if len(row) != len(header):
            errors.append(
                {
                    "type": "csv_invalid",
                    "loc": ["body", index],
                    "msg": f"record {index} has {len(row)} values but the header has {len(header)} columns",
                }
            )
            continue
        records.append({name: _csv_value(value, name in numbers) for name, value in zip(header, row, strict=True)})
    if errors:
        raise RequestValidationFailed(errors[:MAX_REPORTED_ERRORS], records=len(rows) - 1)
    return records


def _csv_value(text: str, is_number: bool) -> Any:
    if text == "":
        return None
    if is_number:
        try:
            return float(text)
        except ValueError:
            return text
    return text


def _finite_float(value: Any) -> float | None:
    """Return ``value`` as a finite float, or None when it is not a JSON number."""
    # bool is a subclass of int in Python, but a JSON true is not a number.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _flight_id(raw: Mapping[str, Any], index: int, errors: list[dict[str, Any]]) -> str | None:
    value = raw.get(FLIGHT_ID_FIELD)
    if value is None or (isinstance(value, str) and len(value) <= MAX_FLIGHT_ID_LENGTH):
        return value
    errors.append(
        {
            "type": "string_type",
            "loc": ["body", index, FLIGHT_ID_FIELD],
            "msg": f"field {FLIGHT_ID_FIELD!r} must be a string of at most {MAX_FLIGHT_ID_LENGTH} "
            f"characters or null, got {_json_type(value)}",
            "input": _json_safe(value),
        }
    )
    return None


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {json.dumps(value)}"
    if isinstance(value, (int, float)):
        return f"number {value!r}" if _finite_float(value) is not None else f"non-finite number {value!r}"
    if isinstance(value, str):
        return f"string {value[:80]!r}"
    if isinstance(value, list):
        return "array"
    return "object"


def _json_safe(value: Any) -> Any:
    # Starlette renders JSON with allow_nan=False, so NaN and infinity are echoed as text.
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, (list, dict)):
        return _json_type(value)
    return value
