"""The server's OpenAPI schema: FastAPI's, plus what it cannot see for itself.

The generation endpoints read their bodies themselves (strict pydantic parsing, errors in
OpenAI's shape, see `protocol.parse_body`), so FastAPI does not know them: the request
bodies are added here from the pydantic models, and every error status with OpenAI's
``{"error": {"message", "type", "param", "code"}}`` body.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from minirepro.papers.serve.protocol import ChatBody, CompletionBody

_ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"description": text, "content": {"application/json": {"schema": _ERROR_SCHEMA}}}
    for status, text in [
        (400, "invalid or unsupported request"),
        (404, "unknown model"),
        (413, "request body too large"),
        (429, "waiting queue full; retry after the Retry-After header's seconds"),
        (500, "the engine failed on this request"),
        (503, "the engine is not running"),
    ]
}


def openapi_schema(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI schema, with the request bodies the endpoints parse themselves (strictly,
    see `protocol.parse_body`) described by their pydantic models."""
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for path, model in [
            ("/v1/completions", CompletionBody),
            ("/v1/chat/completions", ChatBody),
        ]:
            body = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(body.pop("$defs", {}))
            components[model.__name__] = body
            ref = {"$ref": f"#/components/schemas/{model.__name__}"}
            schema["paths"][path]["post"]["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": ref}},
            }
        app.openapi_schema = schema
    return app.openapi_schema


__all__ = ["ERROR_RESPONSES", "openapi_schema"]
