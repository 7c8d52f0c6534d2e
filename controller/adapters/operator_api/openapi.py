"""OpenAPI 3.1 from the route table, and the same document as one readable HTML page: the
document cannot drift from the handlers, and /docs needs no script or CDN."""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from controller.adapters.operator_api import models as m
from controller.adapters.operator_api.common import TITLES
from controller.adapters.operator_api.routes import Answer, Route
from controller.intake.desk import Role

VERSION = "1.0.0"


def openapi_document(
    routes: Sequence[Route], public: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """OpenAPI 3.1 (JSON Schema 2020-12, which pydantic writes) for `routes`; the paths in
    `public` need no token here (this site's choice, e.g. /metrics for Prometheus)."""
    models: set[type[BaseModel]] = {m.Problem}
    for route in routes:
        if route.body is not None:
            models.add(route.body)
        for answer in route.answers.values():
            for part in answer if isinstance(answer, tuple) else (answer,):
                if isinstance(part, type):
                    models.add(part)
    keyed = sorted(models, key=lambda c: c.__name__)
    _, schema = models_json_schema(
        [(c, "validation") for c in keyed], ref_template="#/components/schemas/{model}"
    )
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, public)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "curtaild operator API",
            "version": VERSION,
            "description": "Roles: viewer < operator < admin. Every change is journaled "
            "with who, what and why. Overrides only tighten: grid limits always win.",
        },
        "paths": paths,
        "components": {
            "schemas": schema.get("$defs", {}),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def _operation(route: Route, public: frozenset[str]) -> dict[str, Any]:
    """One route's OpenAPI operation."""
    op: dict[str, Any] = {
        "summary": route.summary,
        "operationId": route.handler.__name__,
        "tags": [route.tag],
        "responses": {},
    }
    params = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in _path_names(route.path)
    ]
    params += [
        {"name": q.name, "in": "query", "required": q.required,
         "description": q.description, "schema": q.schema}
        for q in route.query
    ]  # fmt: skip
    if params:
        op["parameters"] = params
    if route.body is not None:
        content: dict[str, Any] = {"application/json": {"schema": _ref(route.body)}}
        content.update((media, {"schema": {"type": "string"}}) for media in route.also)
        op["requestBody"] = {"required": True, "content": content}
    for status, answer in route.answers.items():
        op["responses"][str(status)] = _response(status, answer)
    if route.body is not None or route.query or _path_names(route.path):
        op["responses"].setdefault("400", _response(400, m.Problem))
    if route.role is not None and route.path not in public:
        op["security"] = [{"bearer": []}]
        op["responses"]["401"] = _response(401, m.Problem)
        op["responses"]["403"] = _response(403, m.Problem)
        op["description"] = f"Needs the {route.role.name.lower()} role."
    if route.body is not None:
        op["responses"]["413"] = _response(413, m.Problem)
    if route.also:
        op["responses"]["415"] = _response(415, m.Problem)
    if route.role is not None and route.role >= Role.OPERATOR:
        op["responses"]["503"] = _response(503, m.Problem)  # the journal cannot be written
    return op


def _path_names(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{")]


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _response(status: int, answer: Answer) -> dict[str, Any]:
    description = TITLES.get(status, "ok") if status >= 400 else "ok"  # noqa: PLR2004
    if answer is None:
        return {"description": description}
    content: dict[str, Any] = {}
    for part in answer if isinstance(answer, tuple) else (answer,):
        if isinstance(part, str):
            shape = "object" if part.endswith("json") else "string"
            content[part] = {"schema": {"type": shape}}
        else:
            kind = "application/problem+json" if part is m.Problem else "application/json"
            content[kind] = {"schema": _ref(part)}
    return {"description": description, "content": content}


def docs_page(doc: Mapping[str, Any]) -> str:
    """The OpenAPI document as one self-contained HTML page: no script, no CDN."""
    e = html.escape
    parts = [
        "<!doctype html><html lang=en><meta charset=utf-8>",
        f"<title>{e(doc['info']['title'])}</title>",
        (
            "<style>body{font:15px/1.45 system-ui,sans-serif;max-width:60rem;margin:2rem auto;"
            "padding:0 1rem;color:#111}code,pre{font:13px ui-monospace,monospace}"
            "pre{background:#f3f3f3;padding:.6rem;overflow:auto}h2{margin-top:2rem;"
            "border-top:1px solid #ccc;padding-top:1rem}.m{font-weight:700;margin-right:.5rem}"
            "</style>"
        ),
        f"<h1>{e(doc['info']['title'])} <small>{e(doc['info']['version'])}</small></h1>",
        f"<p>{e(doc['info']['description'])}</p>",
        (
            "<p>Send <code>Authorization: Bearer &lt;token&gt;</code>. Machine-readable: "
            "<a href=/openapi.json>/openapi.json</a>.</p>"
        ),
    ]
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            parts.append(f"<h2><span class=m>{e(method.upper())}</span><code>{e(path)}</code></h2>")
            parts.append(
                f"<p>{e(op['summary'])}. {e(op.get('description', 'No token needed.'))}</p>"
            )
            for p in op.get("parameters", []):
                req = " (required)" if p.get("required") else ""
                parts.append(
                    f"<p><code>{e(p['name'])}</code> in {e(p['in'])}{req}: "
                    f"{e(p.get('description', ''))}</p>"
                )
            body = op.get("requestBody")
            if body is not None:
                ref = body["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
                also = "".join(
                    f", or <code>{e(kind)}</code>" for kind in body["content"] if "json" not in kind
                )
                parts.append(f"<p>Body: <code>{e(ref)}</code> (JSON){also}</p>")
            answers = ", ".join(f"{code} {_schema_name(r)}" for code, r in op["responses"].items())
            parts.append(f"<p>Answers: {e(answers)}</p>")
    parts.append("<h2>Schemas</h2>")
    for name, schema in doc["components"]["schemas"].items():
        text = json.dumps(schema, indent=2)
        parts.append(f"<h3 id={e(name)}>{e(name)}</h3><pre>{e(text)}</pre>")
    return "\n".join(parts)


def _schema_name(response: Mapping[str, Any]) -> str:
    for kind, content in response.get("content", {}).items():
        ref = content.get("schema", {}).get("$ref")
        return str(ref).rsplit("/", 1)[1] if ref else str(kind)
    return ""
