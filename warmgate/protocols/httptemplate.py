"""A generic HTTP request template for custom (FastAPI, Flask, ...) servers: server.http.

Strings in the body template that are exactly one placeholder are replaced by JSON values:

    "{{payload}}"      {input name: nested list, ...}
    "{{input:NAME}}"   that input's nested list
    "{{value:NAME}}"   that input's first element, as a scalar (for {"text": "..."} style bodies)
    "{{batch_size}}"   the shape's batch size
    "{{shape}}"        the input's full shape (a list); with several inputs {name: shape}

Answers are checked for the `output_fields` (dotted paths; integers index lists), which are also
what the concurrency check compares. Without output_fields any 2xx answer counts as success
(and the concurrency check is off). A custom server has no standard health endpoint, so
server.health_path is required.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from warmgate.config import HttpTemplate, ServerConfig
from warmgate.protocols.answers import (
    InvalidResponse,
    Outputs,
    json_outputs,
    loads_object,
)
from warmgate.protocols.base import (
    JSON_HEADERS,
    Adapter,
    EncodeError,
    PreparedRequest,
    dumps,
)

if TYPE_CHECKING:
    # Annotations only: importing the registry must not load numpy (it runs before the server spawns).
    from warmgate.tensors import Tensor

PLACEHOLDER = re.compile(r"^\{\{\s*(payload|batch_size|shape|input:[^}]+|value:[^}]+)\s*\}\}$")


class TemplateError(EncodeError):
    """The template refers to an input the shape does not have."""


class HttpTemplateAdapter(Adapter):
    name = "http"
    server_options = frozenset({"http"})

    @classmethod
    def check_server(cls, server: ServerConfig) -> None:
        super().check_server(server)
        if server.http is None or server.health_path is None:
            raise ValueError("protocol http needs both server.http (request template) and server.health_path")

    @property
    def template(self) -> HttpTemplate:
        assert self.server.http is not None  # guaranteed by check_server
        return self.server.http

    @property
    def comparable(self) -> bool:
        return bool(self.template.output_fields)

    def build(self, tensors: Sequence[Tensor], batch_size: int) -> PreparedRequest:
        template = self.template
        headers = {**JSON_HEADERS, **template.headers}
        url = self.server.url + template.path
        if template.method == "GET":
            return PreparedRequest("GET", url, None, headers)
        body = substitute(template.body, {t.name: t for t in tensors}, batch_size)
        return PreparedRequest(template.method, url, dumps(body), headers)

    def parse(self, body: bytes) -> Outputs:
        fields = self.template.output_fields
        if not fields:
            return {}
        document = loads_object(body)
        outputs: Outputs = {}
        for field in fields:
            value = lookup(document, field)
            for name, output in json_outputs(value, field).items():
                outputs[name] = output
        return outputs


def substitute(node: Any, tensors: dict[str, Tensor], batch_size: int) -> Any:
    if isinstance(node, dict):
        return {key: substitute(value, tensors, batch_size) for key, value in node.items()}
    if isinstance(node, list):
        return [substitute(value, tensors, batch_size) for value in node]
    if not isinstance(node, str):
        return node
    match = PLACEHOLDER.match(node)
    if match is None:
        return node
    token = match.group(1)
    # (S105: these are placeholder names, not passwords.)
    if token == "payload":  # noqa: S105
        return {name: tensor.nested() for name, tensor in tensors.items()}
    if token == "batch_size":  # noqa: S105
        return batch_size
    if token == "shape":  # noqa: S105
        shapes = {name: list(tensor.shape) for name, tensor in tensors.items()}
        return next(iter(shapes.values())) if len(shapes) == 1 else shapes
    kind, _, name = token.partition(":")
    name = name.strip()
    if name not in tensors:
        raise TemplateError(f"server.http.body: {{{{{token}}}}} names no input of this shape")
    tensor = tensors[name]
    return tensor.nested() if kind == "input" else tensor.flat()[0]


def lookup(document: Any, path: str) -> Any:
    node = document
    for part in path.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.lstrip("-").isdecimal() and -len(node) <= int(part) < len(node):
            node = node[int(part)]
        else:
            raise InvalidResponse(f"response lacks output field {path}")
    return node
