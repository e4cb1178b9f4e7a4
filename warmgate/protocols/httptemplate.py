"""A generic HTTP request template for custom (FastAPI, Flask, ...) servers: server.http.

The request is filled per shape (and per concurrency-check variant) from placeholders:

    {{payload}}        {input name: nested list, ...}
    {{input:NAME}}     that input's nested list
    {{value:NAME}}     that input's first element (for {"text": "..."} style bodies)
    {{batch_size}}     the shape's batch size
    {{shape}}          the input's full shape (a list); with several inputs {name: shape}

A body string that is exactly one placeholder becomes its JSON value. Text takes the scalar ones,
{{batch_size}} and {{value:NAME}}: the path and its query (URL-encoded, `/infer?batch={{batch_size}}`),
header values, and body strings with more around the placeholder (`"n={{batch_size}}"`). Which
placeholder may stand where is checked when the config loads (config.py owns the grammar), so an
unknown or misplaced one is a config error, never text sent to the server.

Answers are checked for the `output_fields` (dotted paths; integers index lists), which are also
what the concurrency check compares, and against the `expect` list: a field that must equal a
value (`"{{batch_size}}"`: the batch size of the request answered) or a list that must have so
many items. Expectations are part of decoding, so warmup, the post-warm check and the load test's
checked answers all apply them, and a server that ran batch 1 for a batch-8 shape fails that
shape. Without output_fields and expect, any 2xx answer counts as success (and the concurrency
check is off). A custom server has no standard health endpoint, so server.health_path is required.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from warmgate.config import Expectation, HttpTemplate, ServerConfig
from warmgate.placeholders import (
    IN_HEADER,
    IN_PATH,
    Placeholder,
    TemplateParts,
    body_string_parts,
    split_template,
    whole_placeholder,
)
from warmgate.protocols.answers import (
    InvalidResponse,
    Outputs,
    json_outputs,
    json_type,
    loads_object,
    output_name,
    show,
)
from warmgate.protocols.base import (
    JSON_HEADERS,
    NO_HEADERS,
    Adapter,
    EncodeError,
    PreparedRequest,
    dumps,
)

if TYPE_CHECKING:
    # Annotations only: importing the registry must not load numpy (it runs before the server spawns).
    from warmgate.tensors import Tensor


class TemplateError(EncodeError):
    """The template cannot be filled for a shape (it names an input the shape does not have)."""


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
        filling = Filling({t.name: t for t in tensors}, batch_size)
        path = filling.text(split_template(template.path, IN_PATH), url_component)
        headers = {**JSON_HEADERS}
        for name, value in template.headers.items():
            headers[name] = header_value(name, filling.text(split_template(value, IN_HEADER)))
        url = self.server.url + path
        body = None if template.method == "GET" else dumps(filling.json(template.body))
        return PreparedRequest(template.method, url, body, headers, batch_size=batch_size)

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

    def decode(self, body: bytes, batch_size: int = 0, headers: Mapping[str, str] = NO_HEADERS) -> Outputs:
        """The base decode (the output_fields), then the expectations, against the batch size of
        the request this answers: every caller that decodes (warmup, post-warm, the load test's
        checked answers) applies them."""
        outputs = super().decode(body, batch_size, headers)
        if self.template.expect:
            check_expectations(loads_object(body), self.template.expect, batch_size)
        return outputs


# ---- filling the template --------------------------------------------------------------------


@dataclass(frozen=True)
class Filling:
    """The values placeholders stand for in one request."""

    tensors: Mapping[str, Tensor]
    batch_size: int

    def json(self, node: Any) -> Any:
        """A JSON template (the body, an expected value) with its placeholders filled. Recursive:
        the template comes from the config, whose loader bounds its nesting."""
        if isinstance(node, dict):
            return {key: self.json(value) for key, value in node.items()}
        if isinstance(node, list):
            return [self.json(value) for value in node]
        if not isinstance(node, str) or "{{" not in node:
            return node
        parts = body_string_parts(node)
        whole = whole_placeholder(parts)
        return self.value(whole) if whole is not None else self.text(parts)

    def text(self, parts: TemplateParts, encode: Callable[[str], str] = str) -> str:
        """Parts of a text template joined, each placeholder as text passed through `encode`."""
        return "".join(part if isinstance(part, str) else encode(self.scalar_text(part)) for part in parts)

    def value(self, placeholder: Placeholder) -> Any:
        kind = placeholder.kind
        if kind == "batch_size":
            return self.batch_size
        if kind == "payload":
            return {name: tensor.nested() for name, tensor in self.tensors.items()}
        if kind == "shape":
            shapes = {name: list(tensor.shape) for name, tensor in self.tensors.items()}
            return next(iter(shapes.values())) if len(shapes) == 1 else shapes
        tensor = self.tensor(placeholder)
        return tensor.nested() if kind == "input" else tensor.flat()[0]

    def scalar_text(self, placeholder: Placeholder) -> str:
        value = self.value(placeholder)
        # Strings as they are; numbers and booleans as JSON spells them (8, 1.5, true).
        return value if isinstance(value, str) else json.dumps(value)

    def tensor(self, placeholder: Placeholder) -> Tensor:
        tensor = self.tensors.get(placeholder.name)
        if tensor is None:
            has = ", ".join(repr(name) for name in self.tensors) or "none"
            raise TemplateError(
                f"server.http: {placeholder.token} names no input of this shape (its inputs: {has})"
            )
        return tensor


def url_component(text: str) -> str:
    # Everything but unreserved characters is escaped: valid in a path segment and in a query.
    return quote(text, safe="")


def header_value(name: str, value: str) -> str:
    # The config refuses CR, LF and NUL in what it holds; a {{value:NAME}} can still bring them.
    if any(char in value for char in "\r\n\0"):
        raise TemplateError(
            f"server.http.headers.{name}: the filled value holds CR, LF or NUL ({show(value)})"
        )
    return value


# ---- answers -----------------------------------------------------------------------------------

# What `find` returns for a path that leads nowhere (None is a JSON value).
_ABSENT = object()


def find(document: Any, path: str) -> Any:
    """The value at a dotted path (integers index lists, negative from the end), or _ABSENT."""
    node = document
    for part in path.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif (
            isinstance(node, list)
            and part.removeprefix("-").isdecimal()
            and -len(node) <= int(part) < len(node)
        ):
            node = node[int(part)]
        else:
            return _ABSENT
    return node


def lookup(document: Any, path: str) -> Any:
    value = find(document, path)
    if value is _ABSENT:
        raise InvalidResponse(f"response lacks output field {output_name(path)}")
    return value


def check_expectations(document: Any, expectations: Sequence[Expectation], batch_size: int) -> None:
    """Raise InvalidResponse (one line: the field, what was expected, what the answer holds) for
    the first expectation this answer to a request of `batch_size` does not meet."""
    filling = Filling({}, batch_size)
    for index, expectation in enumerate(expectations):
        where = f"server.http.expect[{index}]"
        field = output_name(expectation.field)
        actual = find(document, expectation.field)
        if actual is _ABSENT:
            raise InvalidResponse(f"answer lacks field {field} ({where})")
        if expectation.length is not None:
            wanted = batch_size if isinstance(expectation.length, str) else expectation.length
            if not isinstance(actual, list):
                raise InvalidResponse(
                    f"answer field {field} is a JSON {json_type(actual)}, "
                    f"expected a list of {items(wanted)} ({where})"
                )
            if len(actual) != wanted:
                raise InvalidResponse(
                    f"answer field {field} has {items(len(actual))}, expected {wanted} ({where})"
                )
        else:
            expected = filling.json(expectation.equals)
            if not same_json(actual, expected):
                raise InvalidResponse(
                    f"answer field {field} is {show(actual)}, expected {show(expected)} ({where})"
                )


def items(count: int) -> str:
    return f"{count} item" if count == 1 else f"{count} items"


def same_json(actual: Any, expected: Any) -> bool:
    """JSON equality: numbers by value (8 == 8.0), but a boolean is never a number and a string
    never anything else. Recursive over the answer, which loads_object bounds in depth."""
    if isinstance(actual, bool) or isinstance(expected, bool):
        return type(actual) is type(expected) and actual == expected
    if isinstance(actual, (int, float)) and isinstance(expected, (int, float)):
        return actual == expected
    if isinstance(actual, list) and isinstance(expected, list):
        return len(actual) == len(expected) and all(map(same_json, actual, expected))
    if isinstance(actual, dict) and isinstance(expected, dict):
        return actual.keys() == expected.keys() and all(
            same_json(actual[key], expected[key]) for key in actual
        )
    return type(actual) is type(expected) and actual == expected
