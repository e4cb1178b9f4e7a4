"""What a health answer must say for "ready": the endpoints a protocol names, and the check a 200
body must pass where a 200 can still mean "not ready" (TF Serving while a model loads, an
OpenAI-compatible server that does not list the model yet).

Light on purpose, no aiohttp and no config: the probe sidecar runs these checks in a process that
loads neither (docs/probe.md, "Memory"). So a body check is data, a rule and the model it is about,
rather than a closure: the probe's settings carry it into that process as they are.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from warmgate.protocols.answers import InvalidResponse, NotJson, cut, excerpt, loads_object

BodyRule = Literal["model-available", "lists-model"]


@dataclass(frozen=True)
class BodyCheck:
    """Extra check of a 200 body: None when it says ready, else why not."""

    rule: BodyRule
    # The model the body must name (server.model).
    model: str = ""

    def __call__(self, body: bytes) -> str | None:
        return _RULES[self.rule](body, self.model)


@dataclass(frozen=True)
class Endpoint:
    url: str
    body_check: BodyCheck | None = None


def model_available(body: bytes, model: str = "") -> str | None:
    """TF Serving's model status: None when it lists an AVAILABLE version, else why not."""
    try:
        document = loads_object(body)
    except NotJson:
        return "model status is not JSON"
    except InvalidResponse as exc:
        return f"model status is unusable: {exc}"
    if not isinstance(document, dict):
        return "model status is not JSON"
    versions = document.get("model_version_status", [])
    if not isinstance(versions, list):
        return "model status lists no versions"
    if any(v.get("state") == "AVAILABLE" for v in versions if isinstance(v, dict)):
        return None
    states = ",".join(str(v.get("state")) for v in versions if isinstance(v, dict)) or "none"
    return f"no AVAILABLE model version (states: {excerpt(states.encode())})"


def lists_model(body: bytes, model: str) -> str | None:
    """An OpenAI-compatible GET /v1/models answer: None when it lists `model`, else why not."""
    models = listed_models(body)
    if isinstance(models, str):
        return models
    if model in models:
        return None
    return f"does not list model {model!r} (server.model); it lists {model_names(models)}"


def listed_models(body: bytes) -> list[str] | str:
    """The model ids a GET /v1/models answer lists, or why it is not such an answer."""
    try:
        document = loads_object(body)
    except InvalidResponse as exc:
        return f"model list unusable: {exc}"
    data = document.get("data") if isinstance(document, dict) else None
    if not isinstance(data, list):
        return "model list has no data list"
    return [entry["id"] for entry in data if isinstance(entry, dict) and isinstance(entry.get("id"), str)]


def model_names(models: list[str]) -> str:
    if not models:
        return "no models"
    shown = ", ".join(repr(cut(model, 80)) for model in models[:5])
    return shown + (f" and {len(models) - 5} more" if len(models) > 5 else "")


_RULES: dict[str, Callable[[bytes, str], str | None]] = {
    "model-available": model_available,
    "lists-model": lists_model,
}
