"""Answers checked against the JSON schema their request asked for (issue 12, "outputs validated").

A chat request asks for a schema with ``response_format: {"type": "json_schema", "json_schema":
{"schema": ...}}`` (the answer's content, parsed as JSON, must satisfy it) or by forcing a tool call
(``tool_choice`` naming a function: its arguments must satisfy the function's ``parameters``). A
batch may add its own check for every answer: ``output_schema`` on create.
"""

from __future__ import annotations

from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from freight.domain.errors import InvalidInput

#: The error code of an answer that failed its check on every try.
OUTPUT_INVALID = "output_invalid"


def check_output_schema(value: object) -> dict[str, Any] | None:
    """``output_schema`` on create: absent/null, or a JSON schema (an object that is a valid schema)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidInput("Invalid type for 'output_schema': expected a JSON schema object.",
                           param="output_schema", code="invalid_type")
    try:
        Draft202012Validator.check_schema(value)
    except SchemaError as exc:
        raise InvalidInput(f"Invalid 'output_schema': {exc.message}.", param="output_schema",
                           code="invalid_value") from None
    return dict(value)
