"""The request template's placeholders (protocol http): one grammar, used by config validation
to refuse a template that `run` could not fill, and by the http adapter to fill it.

`{{kind}}` or `{{kind:NAME}}`, spaces inside the braces allowed. Every `{{` opens one, so a
misspelt placeholder is an error at load, never text sent to the server. A leaf module: config
(below the protocols) and the http adapter (above it) both import it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PLACEHOLDER = re.compile(r"\{\{(.*?)\}\}")
# Kind -> whether it names an input of the shape (`{{input:NAME}}`).
PLACEHOLDER_KINDS: dict[str, bool] = {
    "payload": False,
    "batch_size": False,
    "shape": False,
    "input": True,
    "value": True,
}
_JSON_ONLY = "a tensor or a shape is JSON, which only a body string that is exactly the placeholder takes"


@dataclass(frozen=True)
class PlaceholderPlace:
    """Where a template string stands, and so which placeholders it may hold."""

    where: str
    allowed: frozenset[str]
    why: str = ""  # why the other kinds cannot stand here


# A body string that is exactly one placeholder takes its JSON value (a tensor, a shape, a number).
WHOLE_BODY_STRING = PlaceholderPlace("in a body string", frozenset(PLACEHOLDER_KINDS))
# Text takes scalars, formatted as text (URL-encoded in the path and query).
IN_PATH = PlaceholderPlace("in the path", frozenset({"batch_size", "value"}), _JSON_ONLY)
IN_HEADER = PlaceholderPlace("in a header value", IN_PATH.allowed, _JSON_ONLY)
IN_BODY_TEXT = PlaceholderPlace("inside a longer body string", IN_PATH.allowed, _JSON_ONLY)
IN_EXPECTATION = PlaceholderPlace(
    "in an expectation",
    frozenset({"batch_size"}),
    "an answer is checked knowing only the batch size of the request it answers",
)


@dataclass(frozen=True)
class Placeholder:
    kind: str
    name: str = ""  # the input that {{input:NAME}} and {{value:NAME}} name

    @property
    def token(self) -> str:
        return "{{" + (f"{self.kind}:{self.name}" if PLACEHOLDER_KINDS[self.kind] else self.kind) + "}}"


TemplateParts = list[str | Placeholder]


def split_template(text: str, place: PlaceholderPlace) -> TemplateParts:
    """`text` as its literal parts and placeholders, in order. ValueError (one line) for an unknown
    placeholder, one that cannot stand in `place`, or a `{{` that is never closed."""
    parts: TemplateParts = []
    position = 0
    for match in PLACEHOLDER.finditer(text):
        parts.append(text[position : match.start()])
        parts.append(_placeholder(match.group(0), match.group(1), place))
        position = match.end()
    rest = text[position:]
    if "{{" in rest:
        opened = rest[rest.index("{{") :]
        raise ValueError(f"unclosed placeholder {_token_shown(opened)} (a '{{{{' needs its '}}}}')")
    parts.append(rest)
    return [part for part in parts if part != ""]


def body_string_parts(text: str) -> TemplateParts:
    """A string of server.http.body: exactly one placeholder keeps its JSON value; anything else
    is text."""
    parts = split_template(text, WHOLE_BODY_STRING)
    if whole_placeholder(parts) is None:
        for part in parts:
            if isinstance(part, Placeholder):
                _check_allowed(part, IN_BODY_TEXT)
    return parts


def whole_placeholder(parts: TemplateParts) -> Placeholder | None:
    """The placeholder a string consists of, when it is exactly one."""
    return parts[0] if len(parts) == 1 and isinstance(parts[0], Placeholder) else None


def _placeholder(written: str, inside: str, place: PlaceholderPlace) -> Placeholder:
    kind, colon, name = (part.strip() for part in inside.partition(":"))
    names_input = PLACEHOLDER_KINDS.get(kind)
    if names_input is None or names_input != bool(colon) or (names_input and not name) or "{{" in inside:
        raise ValueError(
            f"unknown placeholder {_token_shown(written)}; known here: {_listing(place.allowed)}"
        )
    placeholder = Placeholder(kind, name)
    _check_allowed(placeholder, place)
    return placeholder


def _check_allowed(placeholder: Placeholder, place: PlaceholderPlace) -> None:
    if placeholder.kind not in place.allowed:
        why = f" ({place.why})" if place.why else ""
        raise ValueError(
            f"{placeholder.token} cannot stand {place.where}{why}; allowed there: {_listing(place.allowed)}"
        )


def _listing(kinds: frozenset[str]) -> str:
    return ", ".join(Placeholder(kind, "NAME").token for kind in PLACEHOLDER_KINDS if kind in kinds)


def _token_shown(text: str, limit: int = 60) -> str:
    # Placeholders print as written (`{{batchsize}}`) unless that would break the line.
    if text.isprintable() and len(text) <= limit:
        return text
    shown = repr(text)
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."
