"""Structured output: OpenAI's `response_format` turned into a llama.cpp GBNF grammar.

`json_schema` goes through llama-cpp-python's JSON-schema-to-GBNF converter
(`llama_cpp.llama_grammar.SchemaConverter`, the port of llama.cpp's json-schema-to-grammar).
That converter silently ignores what it cannot express (`minimum`, `multipleOf`, `not`, ...),
so the schema is walked first and any keyword outside what the grammar enforces is refused
with a message naming it (the app answers 400): an answer that "matches" a schema whose
constraints were dropped would be a quiet lie.

    grammar = response_format_grammar({"type": "json_schema", "json_schema": {"schema": {...}}})
"""
from __future__ import annotations

import json
from typing import Any

__all__ = ["ANNOTATIONS", "ENFORCED", "FORMATS", "MAX_SCHEMA_CHARS", "SchemaError", "TYPES", "check_schema",
           "json_object_grammar", "response_format_grammar", "schema_grammar"]

# what the converter turns into grammar rules
ENFORCED = {
    "type", "properties", "required", "additionalProperties", "items", "prefixItems", "minItems", "maxItems",
    "enum", "const", "anyOf", "oneOf", "allOf", "$ref", "$defs", "definitions", "pattern", "format",
    "minLength", "maxLength",
}
# annotations: they constrain nothing, so dropping them loses nothing
ANNOTATIONS = {
    "title", "description", "default", "examples", "example", "$schema", "$id", "$comment", "deprecated",
    "readOnly", "writeOnly", "strict", "nullable", "x-order",
}
FORMATS = {"date", "time", "date-time", "uuid", "uuid1", "uuid2", "uuid3", "uuid4", "uuid5"}
TYPES = {"object", "array", "string", "number", "integer", "boolean", "null"}
MAX_SCHEMA_CHARS = 65536


class SchemaError(ValueError):
    """A schema the grammar cannot enforce; `keyword` names the part refused."""

    def __init__(self, message: str, keyword: str | None = None):
        super().__init__(message)
        self.keyword = keyword


def check_schema(schema: Any, path: str = "#") -> None:
    """Raise SchemaError for the first keyword the converter would not enforce."""
    if isinstance(schema, bool):
        if schema is False and path == "#":
            raise SchemaError("the schema 'false' allows no output", "false")
        return
    if not isinstance(schema, dict):
        raise SchemaError(f"{path}: a schema must be an object, not {type(schema).__name__}")
    for key, val in schema.items():
        where = f"{path}/{key}"
        if key in ANNOTATIONS:
            continue
        if key not in ENFORCED:
            raise SchemaError(f"schema keyword '{key}' (at {where}) cannot be enforced by the grammar sampler "
                              "on this server; leave it out or check it after the answer", key)
        if key == "type":
            types = val if isinstance(val, list) else [val]
            bad = [t for t in types if t not in TYPES]
            if bad:
                raise SchemaError(f"{where}: unknown type {bad[0]!r}", "type")
        elif key == "format" and val not in FORMATS:
            raise SchemaError(f"schema format '{val}' (at {where}) cannot be enforced by the grammar sampler "
                              f"(supported: {', '.join(sorted(FORMATS))})", "format")
        elif key in ("minLength", "maxLength") and schema.get("type") != "string":
            raise SchemaError(f"'{key}' (at {where}) is enforced only next to \"type\": \"string\"", key)
        elif key == "$ref" and not (isinstance(val, str) and val.startswith("#")):
            raise SchemaError(f"'$ref' (at {where}) must point inside the schema ('#/...'); nothing is fetched",
                              "$ref")
        elif key == "allOf":
            # the converter merges the properties of allOf parts and drops everything else
            for i, part in enumerate(val if isinstance(val, list) else []):
                extra = set(part) - {"properties", "required", "type", "$ref", "anyOf"} - ANNOTATIONS
                if extra:
                    raise SchemaError(f"'allOf' (at {where}/{i}) is enforced only for parts made of properties; "
                                      f"this one has {sorted(extra)[0]!r}", "allOf")
            for i, part in enumerate(val if isinstance(val, list) else []):
                check_schema(part, f"{where}/{i}")
        elif key in ("properties", "$defs", "definitions"):
            if not isinstance(val, dict):
                raise SchemaError(f"{where} must be an object")
            for name, sub in val.items():
                check_schema(sub, f"{where}/{name}")
        elif key in ("anyOf", "oneOf", "prefixItems"):
            if not isinstance(val, list) or not val:
                raise SchemaError(f"{where} must be a non-empty list")
            for i, sub in enumerate(val):
                check_schema(sub, f"{where}/{i}")
        elif key == "items":
            if isinstance(val, list):
                for i, sub in enumerate(val):
                    check_schema(sub, f"{where}/{i}")
            else:
                check_schema(val, where)
        elif key == "additionalProperties" and isinstance(val, dict):
            check_schema(val, where)
        elif key == "enum" and (not isinstance(val, list) or not val):
            raise SchemaError(f"{where} must be a non-empty list", "enum")
    if "oneOf" in schema:
        # the converter writes oneOf as anyOf: exclusive only when the branches cannot overlap
        pass


def schema_grammar(schema: dict) -> str:
    """GBNF for one JSON schema (checked first)."""
    check_schema(schema)
    from qwenkit.llama_api import json_schema_to_gbnf
    try:
        return json_schema_to_gbnf(json.dumps(schema))
    except Exception as e:  # noqa: BLE001 - the converter raises asserts, KeyErrors, ValueErrors
        raise SchemaError(f"the JSON schema cannot be turned into a grammar: {type(e).__name__}: {e}") from None


def json_object_grammar() -> str:
    """Any JSON object (response_format json_object)."""
    from qwenkit.llama_api import JSON_GBNF
    return JSON_GBNF


def response_format_grammar(rf: dict | None) -> str | None:
    """GBNF for an OpenAI response_format, None for plain text. Raises SchemaError."""
    if not rf:
        return None
    kind = rf.get("type")
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        return json_object_grammar()
    if kind == "json_schema":
        js = rf.get("json_schema")
        if not isinstance(js, dict):
            raise SchemaError("response_format.json_schema must be an object with a 'schema'", "json_schema")
        schema = js.get("schema", {})
        if len(json.dumps(schema)) > MAX_SCHEMA_CHARS:
            raise SchemaError(f"the schema is longer than {MAX_SCHEMA_CHARS} characters", "schema")
        return schema_grammar(schema)
    raise SchemaError(f"response_format type {kind!r} is not one of text, json_object, json_schema", "type")
