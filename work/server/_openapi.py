"""``/openapi.json``: OpenAPI 3.1 generated from the route table and its pydantic models."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from .. import __version__
from ._routing import Endpoint
from ._schemas import ProblemOut

__all__ = ["openapi"]

_REF = "#/components/schemas/{model}"


def _query_parameters(model: type[BaseModel], defs: dict[str, Any]) -> list[dict[str, Any]]:
    schema = model.model_json_schema(ref_template=_REF)
    defs.update(schema.get("$defs", {}))
    required = set(schema.get("required", ()))
    return [
        {
            "name": name,
            "in": "query",
            "required": name in required,
            "schema": {k: v for k, v in prop.items() if k != "title"},
        }
        for name, prop in schema["properties"].items()
    ]


def openapi(endpoints: Sequence[Endpoint], *, secured: bool) -> dict[str, Any]:
    """The OpenAPI 3.1 document for ``endpoints``.

    Args:
        endpoints: the route table.
        secured: bearer auth is on (routes with ``auth`` declare it and their 401).
    """
    models: set[type[BaseModel]] = {ProblemOut}
    for ep in endpoints:
        models.update(m for m in (ep.response, ep.body) if m is not None)
    ordered = sorted(models, key=lambda m: m.__name__)
    _, top = models_json_schema([(m, "validation") for m in ordered], ref_template=_REF)
    schemas: dict[str, Any] = dict(top.get("$defs", {}))
    problem = {"application/problem+json": {"schema": {"$ref": _REF.format(model="ProblemOut")}}}
    paths: dict[str, Any] = {}
    for ep in endpoints:
        op: dict[str, Any] = {
            "summary": ep.summary,
            "operationId": f"{ep.method.lower()}_{ep.path.strip('/').replace('/', '_')}".replace(
                "{", ""
            ).replace("}", ""),
            "tags": [ep.tag],
        }
        params: list[dict[str, Any]] = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in ep.path_params
        ]
        if ep.query is not None:
            params += _query_parameters(ep.query, schemas)
        if params:
            op["parameters"] = params
        if ep.body is not None:
            op["requestBody"] = {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": _REF.format(model=ep.body.__name__)}}
                },
            }
        ok: dict[str, Any] = {"description": "OK"}
        if ep.response is not None:
            ok["content"] = {
                ep.media: {"schema": {"$ref": _REF.format(model=ep.response.__name__)}}
            }
        elif ep.media != "application/json":
            ok["content"] = {ep.media: {"schema": {"type": "string"}}}
        responses: dict[str, Any] = {str(code): ok for code in (ep.ok, *ep.extra_ok)}
        codes = set(ep.errors)
        if ep.auth and secured:
            codes.add(401)
            op["security"] = [{"bearer": []}]
        if ep.body is not None:
            codes.update((413, 422))
        if ep.query is not None:
            codes.add(422)
        for code in sorted(codes):
            responses[str(code)] = {"description": "a problem (RFC 9457)", "content": problem}
        op["responses"] = responses
        paths.setdefault(ep.path, {})[ep.method.lower()] = op
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "anywork", "version": __version__},
        "paths": paths,
        "components": {"schemas": schemas},
    }
    if secured:
        doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    return doc
