"""The warmup.yaml configuration: typed, validated once at load.

Every error is reported as one line that names the YAML path and the bad value, e.g.
``warmup.yaml: shapes[2].inputs.x.dims[1]: must be > 0, got -3``. Library code raises
``ConfigError``; only the CLI turns it into exit code 2.

The set of protocols is not known here: it lives in warmgate.protocols (a higher layer), whose
registry the callers pass in as `protocols=` (validation context). With it, `server.protocol` must
name a registered protocol and each protocol's own config rules apply; without it (tests building
a config for a known protocol) the name is checked when the adapter is made.

Loading is untrusted input (fail closed): the file must be a regular file under MAX_CONFIG_BYTES,
opened non-blocking; YAML goes through a bounded safe loader, so a constructor that raises, a
recursive alias or an alias bomb is one error naming the line; and what `run` uses but pydantic's
types do not cover (URL ports, NUL bytes, header syntax, JSON-only free-form values, `data: file`
targets, the request template's placeholders) is checked here, so a config `warmgate check` accepts
does not fail `run` on its syntax. The placeholder grammar is the leaf `warmgate.placeholders`: the
http adapter (a higher layer) fills templates with the same functions that refused the bad ones.

Longer than 400 lines on purpose: the models and the wording of their errors are one contract
(every key, default and message a user sees), read and changed together; and the loading rules
above are what makes that contract hold for any input.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import stat
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from warmgate.errors import ConfigError  # raised and caught everywhere as config's
from warmgate.files import NotRegularFile, TooLarge, file_kind, os_problem, read_capped
from warmgate.placeholders import (
    IN_EXPECTATION,
    IN_HEADER,
    IN_PATH,
    PLACEHOLDER_KINDS,
    Placeholder,
    TemplateParts,
    body_string_parts,
    split_template,
    whole_placeholder,
)

DEFAULT_CONFIG_FILE = "warmup.yaml"
DEFAULT_STATE_DIR = "/var/run/warmgate"
DEFAULT_PROBE_PORT = 8086

# A warmup.yaml is a few kilobytes; bulk data belongs in `data: file`. The cap bounds what parsing
# costs (libyaml composes 256 KiB of flow scalars in ~0.5 s and ~40 MB).
MAX_CONFIG_BYTES = 256 * 1024
# Aliases let a short document stand for a huge one ("billion laughs"): every node counts once per
# place it is used, plus the characters of its scalars. 1,000,000 is ~3x what an alias-free file
# under MAX_CONFIG_BYTES can reach, so only an alias that multiplies the document hits it.
MAX_EXPANDED_SIZE = 500_000
# Nesting, counted after aliases are expanded: validation, dumping and JSON encoding recurse.
MAX_NESTING = 100

# Open Inference Protocol tensor datatypes (KServe v2 / Triton).
Datatype = Literal[
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
    "FP16", "FP32", "FP64", "BYTES",
]  # fmt: skip
FailurePolicy = Literal["exit", "retry", "stay-unready"]
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"

PositiveInt = Annotated[int, Field(gt=0)]
# Each unit of concurrency is a task and a connection, made up front: a typo of 10**9 would be an
# out-of-memory kill rather than a load test.
MAX_CONCURRENCY = 10_000
Concurrency = Annotated[int, Field(gt=0, le=MAX_CONCURRENCY)]
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]


class ProtocolRules(Protocol):
    """What validation asks of one protocol (its adapter class, in warmgate.protocols)."""

    def check_server(self, server: ServerConfig) -> None:
        """Raise ValueError (one line) when this server section cannot work with the protocol."""

    def supports_auto_shapes(self) -> bool:
        """Whether the protocol reads model metadata, so `shapes: auto` can work."""

    def takes_prompts(self) -> bool:
        """Whether the protocol's shapes are prompts (`shapes[].prompt`, an LLM server) rather than
        tensors (`shapes[].inputs`)."""


# Protocol name -> its rules; the registry of warmgate.protocols is one.
ProtocolCatalog = Mapping[str, ProtocolRules]
_PROTOCOLS = "protocols"  # key of the catalog in the pydantic validation context


def _catalog(info: ValidationInfo) -> ProtocolCatalog | None:
    context = info.context
    return context.get(_PROTOCOLS) if isinstance(context, dict) else None


def expected_names(names: Iterable[str]) -> str:
    """'a', 'b' or 'c': the wording pydantic uses for a Literal, so every choice reads alike."""
    quoted = [repr(name) for name in names]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + f" or {quoted[-1]}"


class _Model(BaseModel):
    # Unknown keys are errors: a typo such as `batchsize:` must not silently do nothing.
    # Numbers are finite: an `.inf` timeout or `.nan` tolerance is a typo, never a setting.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def no_nul(value: Any) -> Any:
    """Strings and paths that reach the OS (exec, open, bind) cannot hold a NUL byte."""
    if "\0" in str(value):
        raise ValueError(f"must not contain a NUL byte, got {_short(str(value))}")
    return value


def json_data(value: Any) -> Any:
    """Free-form fields (a literal `value`, `http.body`) are sent as JSON: YAML timestamps, binary
    and sets cannot be, and would fail every request instead of failing here."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            for key in item:
                if not isinstance(key, str):
                    raise ValueError(f"mapping keys must be strings, got {_short(key)}")
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
        elif item is not None and not isinstance(item, (bool, int, float, str)):
            raise ValueError(
                f"must be JSON data (null, booleans, numbers, strings, lists, mappings), got {_short(item)}"
            )
    return value


# Paths appended to the server URL: a control character would be a broken request line.
URL_PATH_PATTERN = r"^/[^\x00-\x1f\x7f]*$"
HTTP_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


def json_strings(document: Any) -> Iterator[tuple[tuple[int | str, ...], str]]:
    """Every string value of a JSON document with its path, in document order; a placeholder in
    a mapping key is an error (keys are sent as written)."""
    pending: list[tuple[tuple[int | str, ...], Any]] = [((), document)]
    while pending:  # iterative: the loader bounds nesting, not the stack of whoever calls this
        at, node = pending.pop()
        if isinstance(node, dict):
            for key in node:
                if "{{" in key:
                    raise NestedValueError(
                        f"placeholders are not replaced in mapping keys, got {_short(key)}", at
                    )
            pending.extend(((*at, key), value) for key, value in reversed(node.items()))
        elif isinstance(node, list):
            pending.extend(((*at, index), value) for index, value in reversed(list(enumerate(node))))
        elif isinstance(node, str):
            yield at, node


class NestedValueError(ValueError):
    """A validator's error about one part of the value it checks (a string deep in server.http.body,
    the inputs of one shape): `at` extends the YAML path that the error names."""

    def __init__(self, message: str, at: tuple[int | str, ...]) -> None:
        super().__init__(message)
        self.at = at


# A dotted path into a JSON answer: keys, or integers that index lists (negative from the end).
ANSWER_FIELD = re.compile(r"^[^.\x00-\x1f\x7f]+(\.[^.\x00-\x1f\x7f]+)*$")


def answer_field(value: str) -> str:
    if not ANSWER_FIELD.match(value):
        raise ValueError(
            f"must be a dotted path into the answer, like result.scores or labels.0, got {_short(value)}"
        )
    if "{{" in value:
        raise ValueError(f"placeholders are not replaced in a field, got {_short(value)}")
    return value


class Expectation(_Model):
    """A check every answer must pass, so a server that ran another batch than it was sent (or
    answered something else) fails the shape instead of passing it: the value at `field` equals
    `equals`, or is a list of `length` items. `{{batch_size}}` stands for the batch size of the
    request answered; a string that is exactly `{{batch_size}}` is that number."""

    field: str = Field(
        description="Dotted path into the JSON answer, like output_fields (integers index lists)."
    )
    equals: Any = Field(
        None,
        description='The value the field must hold (JSON equality: "{{batch_size}}", "ok", 3; not null).',
    )
    length: Annotated[int, Field(ge=0)] | str | None = Field(
        None,
        description="How many items the list at `field` must have (its leading dimension): a number "
        'or "{{batch_size}}".',
    )

    _field_is_a_path = field_validator("field")(answer_field)

    @field_validator("equals")
    @classmethod
    def _equals_placeholders(cls, value: Any) -> Any:
        json_data(value)
        for at, text in json_strings(value):
            try:
                split_template(text, IN_EXPECTATION)
            except ValueError as exc:
                raise NestedValueError(str(exc), at) from None
        return value

    @field_validator("length", mode="before")
    @classmethod
    def _length_is_a_count(cls, value: Any) -> Any:
        # One rule and one message for every wrong value (a bool, a negative number, another
        # placeholder), rather than one error per member of the type's union.
        if value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
            return value
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                if whole_placeholder(split_template(value, IN_EXPECTATION)) is not None:
                    return value
        raise ValueError(f'must be a whole number >= 0 or "{{{{batch_size}}}}", got {_short(value)}')

    @model_validator(mode="after")
    def _one_comparison(self) -> Expectation:
        # null stands for "not given", so the effective config `warmgate check` prints (every
        # field, unset ones as null) loads back as the same expectation.
        given = [name for name in ("equals", "length") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"needs exactly one of equals, length; got {', '.join(given) or 'neither'}")
        return self


class HttpTemplate(_Model):
    """A request template for custom HTTP servers (protocol: http).

    Placeholders, filled per shape (per request variant): {{payload}} (every input, {name:
    nested list}), {{input:NAME}} (one input's nested list), {{value:NAME}} (its first element),
    {{batch_size}}, {{shape}} (the input's full shape; {name: shape} with several inputs). A body
    string that is exactly one placeholder becomes its JSON value; text (the path and its query,
    header values, body strings with more around the placeholder) takes {{batch_size}} and
    {{value:NAME}}, formatted as text. Anything else in `{{ }}` is a config error.
    """

    method: Literal["POST", "PUT", "GET"] = "POST"
    path: str = Field(
        "/predict",
        pattern=URL_PATH_PATTERN,
        description="Appended to server.url; may hold {{batch_size}} and {{value:NAME}}, also in "
        "its query (/infer?batch={{batch_size}}), URL-encoded.",
    )
    headers: dict[str, str] = Field(
        default_factory=dict, description="Header values may hold {{batch_size}} and {{value:NAME}}."
    )
    body: Any = Field(
        "{{payload}}",
        description="JSON sent as the body (not for GET): a string that is exactly {{payload}}, "
        "{{input:NAME}}, {{value:NAME}}, {{batch_size}} or {{shape}} becomes that JSON value; "
        "{{batch_size}} and {{value:NAME}} also inside longer strings, as text.",
    )
    # Dotted paths into the JSON response that hold the model's outputs (checked for presence,
    # compared by the concurrency check). Empty: any 2xx JSON response counts as success.
    output_fields: list[str] = Field(default_factory=list)
    expect: list[Expectation] = Field(
        default_factory=list,
        description="Checks every answer must pass (e.g. a field equal to {{batch_size}}); one that "
        "fails fails the shape.",
    )

    @field_validator("path")
    @classmethod
    def _path_placeholders(cls, path: str) -> str:
        split_template(path, IN_PATH)
        return path

    @field_validator("headers")
    @classmethod
    def _valid_headers(cls, headers: dict[str, str]) -> dict[str, str]:
        # aiohttp refuses these when sending: at load they are one error, not every request failing.
        for name, value in headers.items():
            if not HTTP_TOKEN.match(name):
                raise ValueError(f"header name {_short(name)} is not an HTTP token")
            if any(char in value for char in "\r\n\0"):
                raise ValueError(f"header {name}: value must not contain CR, LF or NUL, got {_short(value)}")
            try:
                split_template(value, IN_HEADER)
            except ValueError as exc:
                raise NestedValueError(str(exc), (name,)) from None
        return headers

    _body_is_json = field_validator("body")(json_data)

    @field_validator("body")
    @classmethod
    def _body_placeholders(cls, body: Any) -> Any:
        for at, text in json_strings(body):
            try:
                body_string_parts(text)
            except ValueError as exc:
                raise NestedValueError(str(exc), at) from None
        return body

    def named_inputs(self) -> dict[str, str]:
        """Input name -> where the template names it (the first place), for every input that a
        {{input:NAME}} or {{value:NAME}} of the request names."""
        found: dict[str, str] = {}

        def note(parts: TemplateParts, where: tuple[int | str, ...]) -> None:
            for part in parts:
                if isinstance(part, Placeholder) and PLACEHOLDER_KINDS[part.kind]:
                    found.setdefault(part.name, f"{format_path(('server', 'http', *where))} ({part.token})")

        note(split_template(self.path, IN_PATH), ("path",))
        for name, value in self.headers.items():
            note(split_template(value, IN_HEADER), ("headers", name))
        if self.method != "GET":  # a GET sends no body
            for at, text in json_strings(self.body):
                note(body_string_parts(text), ("body", *at))
        return found


# Server families of protocol openai; each sets the defaults of the options below (the table is
# the adapter's, warmgate/protocols/openai.py).
OpenAIFamily = Literal["vllm", "tgi", "sglang", "llamacpp", "transformers", "generic"]


class OpenAIOptions(_Model):
    """protocol openai: which server family (its health and tokenize endpoints), and when a
    stream that went quiet counts as stalled."""

    family: OpenAIFamily = Field(
        "generic",
        description="vllm, tgi, sglang, llamacpp or transformers: their /health (and /tokenize where "
        "the server has one); generic: no health path, prompts counted from usage.prompt_tokens.",
    )
    health_path: str | None = Field(
        None,
        pattern=URL_PATH_PATTERN,
        description="Readiness path besides GET /v1/models. Default: the family's (/health; generic: "
        "none); server.health_path overrides both.",
    )
    tokenize: str = Field(
        "auto",
        description="How prompt lengths are counted while calibrating: auto (the family's tokenize "
        "endpoint where it has one), none (usage.prompt_tokens of a one-token request), or a path "
        "that takes vLLM's /tokenize request ({model, prompt} or {model, messages}).",
    )
    stall_timeout_s: PositiveFloat | None = Field(
        None,
        description="A streamed answer that sends nothing this long after its first token fails as "
        "stream_stalled. Default: half of server.request_timeout_s, at most 10 s.",
    )

    @field_validator("tokenize")
    @classmethod
    def _tokenize_mode_or_path(cls, value: str) -> str:
        if value in ("auto", "none") or re.match(URL_PATH_PATTERN, value):
            return value
        raise ValueError(f"must be auto, none or a path starting with /, got {_short(value)}")


class ServerConfig(_Model):
    command: list[str] = Field(
        default_factory=lambda: ["warmgate", "serve", "--demo"],
        description="The model server's argv, run without a shell. A string is split like a shell would.",
    )
    url: str = Field(
        "http://127.0.0.1:8000",
        pattern=r"^(https?|grpcs?)://[^/\s]+(/\S*)?$",
        description="http(s):// for HTTP protocols; grpc:// (plaintext) or grpcs:// (TLS) for gRPC ones.",
    )
    protocol: str = Field(
        "oip", description="How warmgate talks to the model server (`warmgate schema` lists them)."
    )
    model: str = Field("demo", min_length=1)
    model_version: str | None = None
    health_path: str | None = Field(
        None,
        pattern=URL_PATH_PATTERN,
        description="Override the protocol's readiness path (required for http).",
    )
    live_path: str | None = Field(
        None, pattern=URL_PATH_PATTERN, description="Override the protocol's liveness path."
    )
    start_timeout_s: PositiveFloat = Field(600, description="How long the server may take to become healthy.")
    unknown_model_grace_s: NonNegativeFloat = Field(
        10,
        description="Once the server is ready, how long it may keep saying it does not serve "
        "server.model before the start fails (exit 81) instead of waiting for start_timeout_s.",
    )
    request_timeout_s: PositiveFloat = Field(30, description="Timeout of every warmup/load-test request.")
    binary_tensors: bool = Field(
        False,
        description="protocol oip: send inputs and ask for outputs as binary data (Triton's binary "
        "tensor extension, `binary_data`), as production clients of Triton do, instead of JSON.",
    )
    grpc_health_service: str | None = Field(
        None,
        description="protocol oip-grpc: judge readiness with the standard gRPC health service "
        "(grpc.health.v1.Health/Check) for this service name ('' means the whole server) instead "
        "of ServerReady and ModelReady.",
    )
    workers: Concurrency | None = Field(None, description="Server worker processes, if known.")
    http: HttpTemplate | None = None
    openai: OpenAIOptions | None = Field(
        None, description="protocol openai: the server family and its endpoints (default: generic)."
    )

    @field_validator("command", mode="before")
    @classmethod
    def _split_command_string(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                return shlex.split(value)
            except ValueError as exc:
                raise ValueError(f"cannot split command string: {exc}") from None
        return value

    @field_validator("command")
    @classmethod
    def _command_without_nul(cls, value: list[str]) -> list[str]:
        for argument in value:
            no_nul(argument)
        return value

    @field_validator("url")
    @classmethod
    def _url_that_connects(cls, value: str) -> str:
        # The pattern admits what aiohttp refuses when it first connects: check it here, so a URL
        # `warmgate check` accepts is one `run` can use.
        if any(ord(char) < 0x20 or ord(char) == 0x7F for char in value):
            raise ValueError(f"must not contain control characters, got {_short(value)}")
        try:
            parts = urlsplit(value)
            port = parts.port
        except ValueError as exc:
            problem = "port must be 1-65535" if "out of range" in str(exc) else f"cannot parse it: {exc}"
            raise ValueError(f"{problem}, got {_short(value)}") from None
        if not parts.hostname:
            raise ValueError(f"needs a host, got {_short(value)}")
        if port == 0:
            raise ValueError(f"port must be 1-65535, got {_short(value)}")
        if parts.query or parts.fragment or value.endswith(("?", "#")):
            # Paths are appended to the URL: `?x` would swallow every one of them.
            raise ValueError(
                f"must not have a query or fragment (paths are appended to it), got {_short(value)}"
            )
        return value.rstrip("/")

    @field_validator("protocol")
    @classmethod
    def _known_protocol(cls, value: str, info: ValidationInfo) -> str:
        catalog = _catalog(info)
        if catalog is not None and value not in catalog:
            # Worded like a Literal's error, so the message lists the valid names.
            raise PydanticCustomError(
                "literal_error", "Input should be {expected}", {"expected": expected_names(catalog)}
            )
        return value

    @model_validator(mode="after")
    def _protocol_rules(self, info: ValidationInfo) -> ServerConfig:
        catalog = _catalog(info)
        if catalog is not None:
            catalog[self.protocol].check_server(self)
        return self


class TensorInput(_Model):
    """One input of a warmup request, after Triton's ModelWarmup.Input."""

    datatype: Datatype = "FP32"
    dims: list[PositiveInt] = Field(description="Dims without the batch dimension.")
    data: Literal["zero", "random", "file", "literal", "text"] = "random"
    file: Path | None = Field(None, description="data: file - raw little-endian bytes or a .npy file.")
    value: Any = Field(None, description="data: literal - a scalar (broadcast) or a nested list.")
    length: PositiveInt | None = Field(None, description="data: text - words or tokens per element.")
    unit: Literal["words", "tokens"] = "words"
    seed: int | None = None

    _value_is_json = field_validator("value")(json_data)
    _file_without_nul = field_validator("file")(no_nul)

    @field_validator("dims")
    @classmethod
    def _dims_not_empty(cls, value: list[int]) -> list[int]:
        # A scalar input is written as dims [1], like Triton does.
        if not value:
            raise ValueError("must list at least one dimension (use [1] for a scalar)")
        return value

    @model_validator(mode="after")
    def _data_source_present(self) -> TensorInput:
        if self.data == "file" and self.file is None:
            raise ValueError("data: file needs `file`")
        if self.data == "literal" and self.value is None:
            raise ValueError("data: literal needs `value`")
        if self.data == "text":
            if self.datatype != "BYTES":
                raise ValueError(f"data: text needs datatype BYTES, got {self.datatype}")
            if self.length is None:
                raise ValueError("data: text needs `length` (words or tokens per element)")
        return self


class StabilityConfig(_Model):
    """perf_analyzer-style stability: the last `window` latencies within `tolerance` of their mean."""

    enabled: bool = False
    window: Annotated[int, Field(ge=2)] = 5
    tolerance: PositiveFloat = 0.10
    max_count: PositiveInt = 200
    max_seconds: PositiveFloat = 60


# Beyond any model's context window: a typo, not a prompt (the payload budget bounds it too).
MAX_PROMPT_TOKENS = 1 << 20


class PromptSpec(_Model):
    """An LLM shape (protocol openai): one generated prompt per request, `tokens` long as the
    server itself counts them (calibrated against it), unique per request."""

    tokens: Annotated[int, Field(gt=0, le=MAX_PROMPT_TOKENS)] = Field(
        description="Prompt length in the server's tokens (chat: including its chat template)."
    )
    max_tokens: Annotated[int, Field(gt=0, le=MAX_PROMPT_TOKENS)] = Field(
        16, description="Tokens to generate per request."
    )
    stream: bool = Field(
        True, description="Stream the answer (SSE): TTFT and inter-token latency are measured."
    )
    chat: bool = Field(
        True, description="/v1/chat/completions (through the chat template), else /v1/completions."
    )


def _not_null_in_schema(schema: dict[str, Any]) -> None:
    """A field's JSON schema without its null branch: null only stands for "not given" (in the
    effective config), and without the branch a bad value fails the chart's schema naming its own
    field (shapes[0].inputs.x.dims[0]) rather than the field that holds it."""
    branches = schema.pop("anyOf", None)
    if branches:
        schema.update(next(branch for branch in branches if branch.get("type") != "null"))


class Shape(_Model):
    """A warmup shape (Triton model_warmup semantics) plus its load-test traffic weight; or, for
    an LLM server, a prompt length (`prompt` instead of `inputs`)."""

    name: str = Field(pattern=NAME_PATTERN)
    batch_size: Annotated[int, Field(ge=0)] = Field(
        1,
        description="Prepended to every input's dims; 0 means the model takes no batch dimension. "
        "A prompt shape sends one prompt per request (1).",
    )
    inputs: dict[str, TensorInput] | None = Field(
        None,
        min_length=1,
        description="The request's tensors (exactly one of inputs, prompt).",
        json_schema_extra=_not_null_in_schema,
    )
    prompt: PromptSpec | None = Field(
        None, description="An LLM prompt (protocol openai; exactly one of inputs, prompt)."
    )
    count: PositiveInt = Field(5, description="Warmup requests for this shape.")
    weight: NonNegativeFloat = Field(1.0, description="Share of load-test traffic.")
    until_stable: StabilityConfig | None = None
    compare: bool = Field(
        True,
        description="Include in the concurrency safety check (off for sampling models; off by "
        "default for prompt shapes, whose greedy answers batching may change).",
    )

    @model_validator(mode="before")
    @classmethod
    def _prompt_shapes_compare_off(cls, data: Any) -> Any:
        # An LLM's greedy answer is deterministic one request at a time but may change when the
        # server batches it with others (other kernels, other summation order): comparing texts
        # would call a correct server unsafe. On only when the user asks. Set here, so the
        # effective config `warmgate check` prints says false and loads back the same.
        if isinstance(data, dict) and data.get("prompt") is not None and "compare" not in data:
            return {**data, "compare": False}
        return data

    @model_validator(mode="after")
    def _inputs_or_prompt(self) -> Shape:
        if (self.inputs is None) == (self.prompt is None):
            got = "both" if self.inputs is not None else "neither"
            raise ValueError(f"needs exactly one of inputs (tensors) or prompt (an LLM prompt), got {got}")
        if self.prompt is not None and self.batch_size != 1:
            raise NestedValueError(
                f"a prompt shape sends one prompt per request (1), got {self.batch_size}; load comes "
                "from warmup.concurrency and the load test",
                ("batch_size",),
            )
        return self

    @property
    def tensor_inputs(self) -> dict[str, TensorInput]:
        """The inputs of a tensor shape; none for a prompt shape."""
        return self.inputs or {}


class AutoShapes(_Model):
    """With `shapes: auto`, inputs are read from the model's metadata (Open Inference Protocol)."""

    batch_sizes: list[PositiveInt] = Field(default_factory=lambda: [1, 4, 8], min_length=1)
    count: PositiveInt = 5
    dynamic_dim: PositiveInt = Field(16, description="Size used for dims the metadata lists as -1.")


class WarmupConfig(_Model):
    concurrency: Concurrency | None = Field(None, description="Default: the server's worker count, else 1.")
    until_stable: StabilityConfig = Field(default_factory=StabilityConfig)
    max_payload_bytes: PositiveInt = Field(64 * 1024 * 1024, description="Shapes over this are refused.")


class EarlyStopConfig(_Model):
    """Ending the load test before `duration_s` once every percentile the gate judges is settled
    (rule: warmgate/entrypoint/engine/earlystop.py). Off by default: a shorter test sees fewer
    rare events (errors, a late hiccup) than the configured duration would."""

    enabled: bool = False
    min_requests: PositiveInt = Field(200, description="Never stop before this many requests completed.")
    min_duration_s: NonNegativeFloat = Field(2.0, description="Never stop before this many seconds.")
    tolerance: Annotated[float, Field(gt=0, lt=1)] = Field(
        0.05,
        description="A percentile without an SLO is settled when its confidence interval's "
        "half-width is at most this share of the estimate (one with an SLO only when the interval "
        "lies wholly on one side of it).",
    )
    confidence: Annotated[float, Field(ge=0.5, lt=1)] = Field(
        0.99, description="Confidence of the percentiles' intervals."
    )


class LoadTestConfig(_Model):
    enabled: bool = True
    mode: Literal["closed", "open"] = "closed"
    duration_s: PositiveFloat = 10
    concurrency: Concurrency = 4
    rate: PositiveFloat = Field(50, description="Requests per second (open loop).")
    max_requests: PositiveInt | None = Field(None, description="Stop early after this many requests.")
    early_stop: EarlyStopConfig = Field(default_factory=EarlyStopConfig)


class GateConfig(_Model):
    p95_ms: PositiveFloat | None = Field(None, description="Load-test p95 SLO.")
    p99_ms: PositiveFloat | None = Field(None, description="Load-test p99 SLO.")
    ttft_p95_ms: PositiveFloat | None = Field(
        None, description="Load-test p95 SLO on time to first token, over the streamed prompt shapes."
    )
    itl_p95_ms: PositiveFloat | None = Field(
        None, description="Load-test p95 SLO on inter-token latency, over the streamed prompt shapes."
    )
    max_error_rate: Fraction = 0.0
    max_first_to_steady_ratio: PositiveFloat | None = Field(
        3.0,
        description="Post-warm first request against steady p50, per shape (time to first token "
        "for prompt shapes).",
    )
    max_mismatches: Annotated[int, Field(ge=0)] = Field(
        0, description="Concurrency-check mismatches allowed per shape."
    )
    # One post-warm request on a fast model is noisy: at loopback speeds a scheduler hiccup is a 3x
    # ratio. Below this latency no user feels a cold start, so the ratio check passes regardless.
    ratio_floor_ms: NonNegativeFloat = Field(
        5.0, description="A post-warm request faster than this passes the ratio check whatever its ratio."
    )


class ConcurrencyCheckConfig(_Model):
    """Golden answers recorded one at a time, compared with answers given under concurrent load."""

    enabled: bool = Field(True, description="Off also for protocol http without http.output_fields.")
    fraction: Annotated[float, Field(gt=0, le=1)] = Field(
        0.25, description="Share of load-test requests that reuse the golden inputs."
    )
    variants: PositiveInt = Field(
        4, description="Distinct deterministic inputs per shape (each sent twice, one at a time, in warmup)."
    )
    rtol: NonNegativeFloat = Field(1e-3, description="Relative tolerance for floating-point outputs.")
    atol: NonNegativeFloat = Field(1e-5, description="Absolute tolerance for floating-point outputs.")


class MemoryConfig(_Model):
    limit_bytes: PositiveInt | None = Field(None, description="Default: the container's cgroup memory.max.")
    headroom_fraction: Fraction = Field(0.10, description="Peak memory must stay this far below the limit.")
    gpu_headroom_fraction: Fraction = 0.05
    sample_interval_s: PositiveFloat = 0.2


class DrainConfig(_Model):
    quiet_period_s: NonNegativeFloat = Field(
        5, description="Readiness fails this long before the server is signalled."
    )
    grace_period_s: NonNegativeFloat = Field(
        20, description="After signalling, wait this long before SIGKILL."
    )


class PolicyConfig(_Model):
    on_failure: FailurePolicy = "exit"
    retries: Annotated[int, Field(ge=0)] = 2


class ReadinessGateConfig(_Model):
    enabled: bool = False
    condition_type: str = Field("warmgate.dev/warm", pattern=r"^([a-z0-9.-]+/)?[A-Za-z0-9][A-Za-z0-9_.-]*$")


class ProbeConfig(_Model):
    host: Annotated[str, AfterValidator(no_nul)] = "0.0.0.0"
    port: Annotated[int, Field(ge=1, le=65535)] = DEFAULT_PROBE_PORT
    check_timeout_s: PositiveFloat = Field(0.5, description="Timeout of the probe's own server check.")
    check_cache_s: NonNegativeFloat = Field(1.0, description="A server check result is reused this long.")
    live_failures: PositiveInt = Field(3, description="Consecutive failed checks before /livez fails.")
    readiness_gate: ReadinessGateConfig = Field(default_factory=ReadinessGateConfig)


class Config(_Model):
    server: ServerConfig = Field(default_factory=ServerConfig)
    shapes: Literal["auto"] | list[Shape] = Field(default_factory=list)
    auto_shapes: AutoShapes = Field(default_factory=AutoShapes)
    warmup: WarmupConfig = Field(default_factory=WarmupConfig)
    load_test: LoadTestConfig = Field(default_factory=LoadTestConfig)
    gate: GateConfig = Field(default_factory=GateConfig)
    concurrency_check: ConcurrencyCheckConfig = Field(default_factory=ConcurrencyCheckConfig)
    memory: MemoryConfig = Field(default_factory=MemoryConfig)
    state_dir: Annotated[Path, AfterValidator(no_nul)] = Path(DEFAULT_STATE_DIR)
    drain: DrainConfig = Field(default_factory=DrainConfig)
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    probe: ProbeConfig = Field(default_factory=ProbeConfig)
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("shapes")
    @classmethod
    def _unique_shape_names(cls, shapes: Literal["auto"] | list[Shape]) -> Literal["auto"] | list[Shape]:
        if isinstance(shapes, list):
            seen: set[str] = set()
            for shape in shapes:
                if shape.name in seen:
                    raise ValueError(f"duplicate shape name {shape.name!r}")
                seen.add(shape.name)
        return shapes

    @model_validator(mode="after")
    def _template_inputs_exist(self) -> Config:
        # The template is filled for every shape: an input it names that a shape lacks would fail
        # that shape at run time. With shapes: auto the inputs are known only then.
        template = self.server.http
        if template is None or not isinstance(self.shapes, list):
            return self
        for name, where in template.named_inputs().items():
            for index, shape in enumerate(self.shapes):
                if shape.inputs is not None and name not in shape.inputs:
                    has = ", ".join(repr(each) for each in shape.inputs)
                    raise NestedValueError(
                        f"no input {name!r}, which {where} names (this shape has {has})",
                        ("shapes", index, "inputs"),
                    )
        return self

    @model_validator(mode="after")
    def _auto_shapes_need_metadata(self, info: ValidationInfo) -> Config:
        # Input names, datatypes and dims come from the model's metadata, which not every
        # protocol publishes.
        catalog = _catalog(info)
        protocol = self.server.protocol
        if self.shapes == "auto" and catalog is not None and not catalog[protocol].supports_auto_shapes():
            capable = [name for name, rules in catalog.items() if rules.supports_auto_shapes()]
            needs = f"server.protocol {' or '.join(capable)}" if capable else "a protocol that reads it"
            raise ValueError(f"shapes: auto needs {needs} (model metadata), got {protocol}")
        return self

    @model_validator(mode="after")
    def _shapes_fit_the_protocol(self, info: ValidationInfo) -> Config:
        # An LLM server takes prompts, a tensor server tensors: a shape of the other kind could
        # never be sent, so it is refused here rather than failing the warmup.
        catalog = _catalog(info)
        if catalog is None or not isinstance(self.shapes, list):
            return self
        protocol = self.server.protocol
        prompts = catalog[protocol].takes_prompts()
        for index, shape in enumerate(self.shapes):
            if prompts and shape.prompt is None:
                raise NestedValueError(
                    f"protocol {protocol} takes prompt shapes (`prompt: {{tokens: N}}`), not tensor inputs",
                    ("shapes", index, "inputs"),
                )
            if not prompts and shape.prompt is not None:
                takers = [name for name, rules in catalog.items() if rules.takes_prompts()]
                needs = f"server.protocol {' or '.join(takers)}" if takers else "an LLM protocol"
                raise NestedValueError(
                    f"a prompt shape needs {needs}, got {protocol}", ("shapes", index, "prompt")
                )
        return self

    @model_validator(mode="after")
    def _token_slos_have_streams(self) -> Config:
        # Time to first token and inter-token latency are judged on streamed prompt shapes only
        # (a non-streamed answer's first token arrives with its last): an SLO with none to judge
        # is a mistake, not a gate that passes.
        if not isinstance(self.shapes, list) or any(s.prompt and s.prompt.stream for s in self.shapes):
            return self
        for field in ("ttft_p95_ms", "itl_p95_ms"):
            if getattr(self.gate, field) is not None:
                raise NestedValueError(
                    "is judged on streamed prompt shapes (shapes[].prompt with stream: true), and no "
                    "shape is one",
                    ("gate", field),
                )
        return self

    @property
    def prompt_shapes(self) -> bool:
        """Whether the shapes are LLM prompts (protocol openai)."""
        return isinstance(self.shapes, list) and any(shape.prompt is not None for shape in self.shapes)


def latency_slo_missing(config: Config) -> str | None:
    """Why the gate judges warmth only, or None when it judges latency under load too."""
    gate = config.gate
    # An LLM service states its SLO as time to first token and inter-token latency.
    fields = (
        ("ttft_p95_ms", "itl_p95_ms", "p95_ms", "p99_ms") if config.prompt_shapes else ("p95_ms", "p99_ms")
    )
    if all(getattr(gate, field) is None for field in fields):
        named = ", ".join(f"gate.{field}" for field in fields)
        return (
            f"no latency SLO is set ({named}): the gate judges warmth, errors, memory "
            "and concurrency only, not whether the load test's latency is acceptable"
        )
    if not config.load_test.enabled:
        return "a latency SLO is set but load_test.enabled is false: the SLO is never judged"
    return None


# Fields that operators change per deployment, overridable without editing the file.
ENV_OVERRIDES: dict[str, tuple[str, ...]] = {
    "WARMGATE_STATE_DIR": ("state_dir",),
    "WARMGATE_SERVER_URL": ("server", "url"),
    "WARMGATE_PROTOCOL": ("server", "protocol"),
    "WARMGATE_MODEL": ("server", "model"),
    "WARMGATE_START_TIMEOUT": ("server", "start_timeout_s"),
    "WARMGATE_REQUEST_TIMEOUT": ("server", "request_timeout_s"),
    "WARMGATE_WORKERS": ("server", "workers"),
    "WARMGATE_LOAD_DURATION": ("load_test", "duration_s"),
    "WARMGATE_LOAD_CONCURRENCY": ("load_test", "concurrency"),
    "WARMGATE_ON_FAILURE": ("policy", "on_failure"),
    "WARMGATE_QUIET_PERIOD": ("drain", "quiet_period_s"),
    "WARMGATE_GRACE_PERIOD": ("drain", "grace_period_s"),
    "WARMGATE_PROBE_PORT": ("probe", "port"),
    "WARMGATE_READINESS_GATE": ("probe", "readiness_gate", "enabled"),
    "WARMGATE_LOG_LEVEL": ("log_level",),
}


def default_config_path(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    return Path(env.get("WARMGATE_CONFIG") or DEFAULT_CONFIG_FILE)


def load_config(
    path: Path | None,
    environ: Mapping[str, str] | None = None,
    *,
    protocols: ProtocolCatalog | None = None,
    check_files: bool = True,
) -> Config:
    """Read, override from the environment, and validate. Raises ConfigError (one line).

    `protocols`: the protocol registry (warmgate.protocols.adapters()); every command passes it.
    `check_files`: also check that every `data: file` is a regular file within the payload budget
    (off only for a reader that never sends the warmup, such as the probe sidecar)."""
    env = os.environ if environ is None else environ
    source = str(path) if path is not None else "defaults"
    raw: Any = {}
    if path is not None:
        raw = parse_yaml(read_config_text(path), source)
    config = validate_config(raw, source, env, protocols=protocols)
    if check_files:
        check_input_files(config, source)
    return config


def read_config_text(path: Path) -> str:
    """The config file's text: a regular file under MAX_CONFIG_BYTES, opened without blocking, so a
    FIFO, a device such as /dev/zero or a directory is one error instead of a hang or a flood."""
    try:
        data = read_capped(path, MAX_CONFIG_BYTES)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except NotRegularFile as exc:
        raise ConfigError(f"{path}: config file must be a regular file, got {exc.kind}") from None
    except TooLarge:
        raise ConfigError(
            f"{path}: config file is over {MAX_CONFIG_BYTES // 1024} KiB (bulk data belongs in `data: file`)"
        ) from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read config file: {os_problem(exc)}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: config file is not UTF-8: {exc.reason} at byte {exc.start}") from None


def check_input_files(config: Config, source: str) -> None:
    """Every `data: file` names a regular file within warmup.max_payload_bytes: the engine reads
    it whole, so /dev/zero or a multi-GB file would exhaust memory at run time."""
    if not isinstance(config.shapes, list):
        return
    budget = config.warmup.max_payload_bytes
    for index, shape in enumerate(config.shapes):
        for name, spec in shape.tensor_inputs.items():
            if spec.data != "file" or spec.file is None:
                continue
            where = f"{source}: shapes[{index}].inputs.{name}.file"
            try:
                info = os.stat(spec.file)
            except FileNotFoundError:
                raise ConfigError(f"{where}: no such file, got {_short(str(spec.file))}") from None
            except (OSError, ValueError) as exc:
                raise ConfigError(
                    f"{where}: cannot read {_short(str(spec.file))}: {os_problem(exc)}"
                ) from None
            if not stat.S_ISREG(info.st_mode):
                kind = file_kind(info.st_mode)
                raise ConfigError(f"{where}: must be a regular file, got {kind} {_short(str(spec.file))}")
            if info.st_size > budget:
                raise ConfigError(
                    f"{where}: {info.st_size} bytes is over warmup.max_payload_bytes ({budget}), "
                    f"got {_short(str(spec.file))}"
                )


def parse_yaml(text: str, source: str) -> Any:
    """YAML to plain data, where every failure is one ConfigError naming the line: syntax, a
    constructor that raises (`2001-13-45`, `!!int "abc"`, an int over Python's digit limit),
    unknown tags, recursive aliases and alias bombs (see MAX_EXPANDED_SIZE)."""
    try:
        raw = _load_bounded(text)
    except yaml.reader.ReaderError as exc:
        # A control character or bad encoding: the reader knows the offset, not the line.
        line = text.count("\n", 0, exc.position) + 1
        raise ConfigError(f"{source}: invalid YAML at line {line}: {_one_line(exc.reason)}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: invalid YAML{_yaml_where(exc)}: {_yaml_problem(exc)}") from None
    except RecursionError:
        raise ConfigError(f"{source}: invalid YAML: nested too deeply") from None
    except Exception as exc:  # a constructor failing outside any node
        raise ConfigError(f"{source}: invalid YAML: {type(exc).__name__}: {_one_line(str(exc))}") from None
    return {} if raw is None else raw


_YAML_TAG_PREFIX = "tag:yaml.org,2002:"


class _BoundedLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """The safe loader (libyaml's parser where installed), whose constructors fail as YAMLErrors
    that carry the node's line, whatever the constructor raised."""

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (yaml.YAMLError, RecursionError):
            raise
        except Exception as exc:  # e.g. ValueError from datetime or int()
            tag = node.tag.replace(_YAML_TAG_PREFIX, "!!")
            shown = f" {_short(node.value)}" if isinstance(node, yaml.ScalarNode) else ""
            # ValueError says why (a month of 13, an int over Python's digit limit); a KeyError
            # or AttributeError from inside a constructor says nothing a user can act on.
            reason = str(exc).split(";")[0] if isinstance(exc, (ValueError, OverflowError)) else ""
            problem = f"cannot read{shown} as {tag}" + (f": {_one_line(reason)}" if reason else "")
            raise yaml.constructor.ConstructorError(None, None, problem, node.start_mark) from None


def _load_bounded(text: str) -> Any:
    loader = _BoundedLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


class _ExpansionError(yaml.YAMLError):
    def __init__(self, problem: str, node: yaml.Node) -> None:
        super().__init__(problem)
        self.problem = problem
        self.problem_mark = node.start_mark


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _check_expansion(root: yaml.Node) -> None:
    """Refuse a node graph that aliases make recursive, too large or too deep once expanded.

    The composed graph shares aliased nodes, so this costs one visit per node however far the
    aliases would expand; iterative, so no input can exhaust the stack here."""
    measured: dict[int, tuple[int, int]] = {}  # id(node) -> (expanded size, expanded depth)
    open_nodes: set[int] = set()  # the current path from the root: an alias back into it is a cycle
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            children = [measured[id(child)] for child in _children(node)]
            own = len(node.value) if isinstance(node, yaml.ScalarNode) else 0
            size = 1 + own + sum(size for size, _ in children)
            depth = 1 + max((depth for _, depth in children), default=0)
            if size > MAX_EXPANDED_SIZE:
                raise _ExpansionError(
                    f"aliases expand this node past {MAX_EXPANDED_SIZE:,} elements and characters", node
                )
            if depth > MAX_NESTING:
                raise _ExpansionError(f"nested more than {MAX_NESTING} levels deep (aliases expanded)", node)
            measured[key] = (size, depth)
            open_nodes.discard(key)
        elif key in open_nodes:
            raise _ExpansionError("an alias refers to a node that contains it (a recursive structure)", node)
        elif key not in measured:
            open_nodes.add(key)
            stack.append((node, True))
            stack.extend((child, False) for child in _children(node) if id(child) not in measured)


def _yaml_where(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    return f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""


def _yaml_problem(exc: yaml.YAMLError) -> str:
    problem = getattr(exc, "problem", None) or getattr(exc, "context", None)
    if problem is None:
        problem = exc.reason if isinstance(exc, yaml.reader.ReaderError) else type(exc).__name__
    return _one_line(str(problem))


def _one_line(text: str) -> str:
    return " ".join(text.split())


def validate_config(
    raw: Any, source: str, environ: Mapping[str, str], *, protocols: ProtocolCatalog | None = None
) -> Config:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: top level must be a mapping, got {_type_name(raw)}")
    overridden, origins = _apply_env_overrides(raw, environ)
    try:
        return Config.model_validate(overridden, context={_PROTOCOLS: protocols})
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, source, origins)) from None
    except RecursionError:
        raise ConfigError(f"{source}: nested too deeply") from None


# What a WARMGATE_* value may parse to; anything else (a timestamp, binary, a list) is taken as the
# string it was written as, and the field's own validation judges it.
_ENV_SCALARS = (str, int, float, bool, type(None))


def _apply_env_overrides(
    raw: dict[str, Any], environ: Mapping[str, str]
) -> tuple[dict[str, Any], dict[tuple[str, ...], str]]:
    """Return a copy of `raw` with WARMGATE_* values set, and which path came from which variable."""
    result: dict[str, Any] = dict(raw)
    origins: dict[tuple[str, ...], str] = {}
    for variable, path in ENV_OVERRIDES.items():
        value = environ.get(variable)
        if value is None or value == "":
            continue
        node = result
        for key in path[:-1]:
            child = node.get(key)
            node[key] = dict(child) if isinstance(child, dict) else {}
            node = node[key]
        node[path[-1]] = _env_value(variable, path, value)
        origins[path] = variable
    return result, origins


def _env_value(variable: str, path: tuple[str, ...], value: str) -> Any:
    """YAML scalar rules turn "30" into 30 and "true" into True; pydantic does the rest."""
    if len(value) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{variable} ({format_path(path)}): over {MAX_CONFIG_BYTES // 1024} KiB")
    # An explicit tag (`!!int abc`, `!!binary ...`, `!foo`) asks for a type: when it cannot be
    # built, or builds something no scalar field takes, that is an error, not a string.
    tagged = value.lstrip().startswith("!")
    where = f"{variable} ({format_path(path)})"
    try:
        parsed = _load_bounded(value)
    except yaml.constructor.ConstructorError as exc:
        if tagged:
            raise ConfigError(f"{where}: {_yaml_problem(exc)}") from None
        return value  # e.g. "2001-13-45" for a model name: the string it was written as
    except (yaml.YAMLError, RecursionError, ValueError):
        return value
    if isinstance(parsed, _ENV_SCALARS):
        return parsed
    if tagged:
        raise ConfigError(f"{where}: a tagged value must be a plain scalar, got {_short(value)}")
    return value


# Pydantic inserts union-member tags into error locations; they mean nothing to a user.
_UNION_TAG = re.compile(r"^(list|dict|literal|tuple|function-\w+|json-or-python)\[.*\]$|^literal\[")


def _format_validation_error(
    exc: ValidationError, source: str, origins: Mapping[tuple[str, ...], str]
) -> str:
    errors = exc.errors(include_url=False)

    def clean(loc: tuple[int | str, ...]) -> tuple[int | str, ...]:
        return tuple(p for p in loc if not (isinstance(p, str) and _UNION_TAG.match(p)))

    # For a union (shapes: auto | [...]) pydantic reports every branch; the deepest is the real one.
    error = max(errors, key=lambda e: len(clean(e["loc"])))
    loc = clean(error["loc"])
    nested = (error.get("ctx") or {}).get("error")
    if isinstance(nested, NestedValueError):
        loc = (*loc, *nested.at)
    path = format_path(loc)
    where = f"{source}: {path}" if path else source
    variable = origins.get(tuple(str(p) for p in loc))
    if variable is not None:
        where = f"{variable} ({path})"
    message = _humanise(error)
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 and not _all_same_branch(errors) else ""
    return f"{where}: {message}{more}"


def _all_same_branch(errors: list[Any]) -> bool:
    return len({e["loc"][:1] for e in errors}) == 1 and len(errors) <= 2


def format_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _humanise(error: Any) -> str:
    kind = error["type"]
    ctx = error.get("ctx") or {}
    bad = error.get("input")
    got = f", got {_short(bad)}"
    if kind == "greater_than":
        return f"must be > {_number(ctx['gt'])}{got}"
    if kind == "greater_than_equal":
        return f"must be >= {_number(ctx['ge'])}{got}"
    if kind == "less_than_equal":
        return f"must be <= {_number(ctx['le'])}{got}"
    if kind == "missing":
        return "required field is missing"
    if kind == "extra_forbidden":
        return "unknown field (check the spelling; `warmgate schema` lists the fields)"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected')}{got}"
    if kind == "string_pattern_mismatch":
        return f"must match {ctx.get('pattern')}{got}"
    if kind in ("too_short", "too_long"):
        return f"{error['msg'].lower()}{got}"
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    if kind.endswith("_type") or kind.endswith("_parsing"):
        return f"{error['msg'][0].lower()}{error['msg'][1:]}{got}"
    return f"{error['msg'][0].lower()}{error['msg'][1:]}{got}"


def _number(bound: Any) -> str:
    # Bounds are stored as floats for float fields; "> 0" reads better than "> 0.0".
    return f"{bound:g}" if isinstance(bound, float) else str(bound)


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value) if isinstance(value, str) else _type_or_repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _type_or_repr(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, int) and value.bit_length() > 256:
        # repr() of an int over Python's digit limit raises; nobody reads 80 digits anyway.
        return f"an integer of {value.bit_length()} bits"
    return repr(value)


def _type_name(value: Any) -> str:
    names: dict[type, str] = {dict: "a mapping", list: "a list", str: "a string"}
    return names.get(type(value), type(value).__name__)


def json_schema(protocols: Iterable[str]) -> dict[str, Any]:
    """The JSON Schema of warmup.yaml; `protocols` (the registry's names) become server.protocol's enum."""
    schema = Config.model_json_schema()
    schema["$defs"]["ServerConfig"]["properties"]["protocol"]["enum"] = list(protocols)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "warmgate warmup.yaml"
    return schema
