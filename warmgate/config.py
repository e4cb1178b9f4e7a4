"""The warmup.yaml configuration: typed, validated once at load.

Every error is reported as one line that names the YAML path and the bad value, e.g.
``warmup.yaml: shapes[2].inputs.x.dims[1]: must be > 0, got -3``. Library code raises
``ConfigError``; only the CLI turns it into exit code 2.

The set of protocols is not known here: it lives in warmgate.protocols (a higher layer), whose
registry the callers pass in as `protocols=` (validation context). With it, `server.protocol` must
name a registered protocol and each protocol's own config rules apply; without it (tests building
a config for a known protocol) the name is checked when the adapter is made.

Longer than 400 lines on purpose: the models and the wording of their errors are one contract
(every key, default and message a user sees), read and changed together.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

DEFAULT_CONFIG_FILE = "warmup.yaml"
DEFAULT_STATE_DIR = "/var/run/warmgate"
DEFAULT_PROBE_PORT = 8086

# Open Inference Protocol tensor datatypes (KServe v2 / Triton).
Datatype = Literal[
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
    "FP16", "FP32", "FP64", "BYTES",
]  # fmt: skip
FailurePolicy = Literal["exit", "retry", "stay-unready"]
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"

PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]


class ConfigError(Exception):
    """A configuration or usage error: one line, already naming where it is."""


class ProtocolRules(Protocol):
    """What validation asks of one protocol (its adapter class, in warmgate.protocols)."""

    def check_server(self, server: ServerConfig) -> None:
        """Raise ValueError (one line) when this server section cannot work with the protocol."""

    def supports_auto_shapes(self) -> bool:
        """Whether the protocol reads model metadata, so `shapes: auto` can work."""


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
    model_config = ConfigDict(extra="forbid", frozen=True)


class HttpTemplate(_Model):
    """A request template for custom HTTP servers (protocol: http).

    Any string in `body` equal to "{{payload}}" is replaced by the generated inputs, as a JSON
    object mapping each input name to its nested list; "{{batch_size}}" and "{{shape}}" likewise.
    """

    method: Literal["POST", "PUT", "GET"] = "POST"
    path: str = Field("/predict", pattern=r"^/")
    headers: dict[str, str] = Field(default_factory=dict)
    body: Any = "{{payload}}"
    # Dotted paths into the JSON response that hold the model's outputs (checked for presence,
    # compared by the concurrency check). Empty: any 2xx JSON response counts as success.
    output_fields: list[str] = Field(default_factory=list)


class ServerConfig(_Model):
    command: list[str] = Field(
        default_factory=lambda: ["warmgate", "serve", "--demo"],
        description="The model server's argv, run without a shell. A string is split like a shell would.",
    )
    url: str = Field("http://127.0.0.1:8000", pattern=r"^https?://[^/\s]+(/\S*)?$")
    protocol: str = Field(
        "oip", description="How warmgate talks to the model server (`warmgate schema` lists them)."
    )
    model: str = Field("demo", min_length=1)
    model_version: str | None = None
    health_path: str | None = Field(
        None, pattern=r"^/", description="Override the protocol's readiness path (required for http)."
    )
    live_path: str | None = Field(None, pattern=r"^/", description="Override the protocol's liveness path.")
    start_timeout_s: PositiveFloat = Field(600, description="How long the server may take to become healthy.")
    request_timeout_s: PositiveFloat = Field(30, description="Timeout of every warmup/load-test request.")
    workers: PositiveInt | None = Field(None, description="Server worker processes, if known.")
    http: HttpTemplate | None = None

    @field_validator("command", mode="before")
    @classmethod
    def _split_command_string(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                return shlex.split(value)
            except ValueError as exc:
                raise ValueError(f"cannot split command string: {exc}") from None
        return value

    @field_validator("url")
    @classmethod
    def _strip_trailing_slash(cls, value: str) -> str:
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


class Shape(_Model):
    """A warmup shape (Triton model_warmup semantics) plus its load-test traffic weight."""

    name: str = Field(pattern=NAME_PATTERN)
    batch_size: Annotated[int, Field(ge=0)] = Field(
        1, description="Prepended to every input's dims; 0 means the model takes no batch dimension."
    )
    inputs: dict[str, TensorInput] = Field(min_length=1)
    count: PositiveInt = Field(5, description="Warmup requests for this shape.")
    weight: NonNegativeFloat = Field(1.0, description="Share of load-test traffic.")
    until_stable: StabilityConfig | None = None
    compare: bool = Field(
        True, description="Include in the concurrency safety check (off for sampling models)."
    )


class AutoShapes(_Model):
    """With `shapes: auto`, inputs are read from the model's metadata (Open Inference Protocol)."""

    batch_sizes: list[PositiveInt] = Field(default_factory=lambda: [1, 4, 8], min_length=1)
    count: PositiveInt = 5
    dynamic_dim: PositiveInt = Field(16, description="Size used for dims the metadata lists as -1.")


class WarmupConfig(_Model):
    concurrency: PositiveInt | None = Field(None, description="Default: the server's worker count, else 1.")
    until_stable: StabilityConfig = Field(default_factory=StabilityConfig)
    max_payload_bytes: PositiveInt = Field(64 * 1024 * 1024, description="Shapes over this are refused.")


class LoadTestConfig(_Model):
    enabled: bool = True
    mode: Literal["closed", "open"] = "closed"
    duration_s: PositiveFloat = 10
    concurrency: PositiveInt = 4
    rate: PositiveFloat = Field(50, description="Requests per second (open loop).")
    max_requests: PositiveInt | None = Field(None, description="Stop early after this many requests.")


class GateConfig(_Model):
    p95_ms: PositiveFloat | None = Field(None, description="Load-test p95 SLO.")
    p99_ms: PositiveFloat | None = Field(None, description="Load-test p99 SLO.")
    max_error_rate: Fraction = 0.0
    max_first_to_steady_ratio: PositiveFloat | None = Field(
        3.0, description="Post-warm first request against steady p50, per shape."
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
    host: str = "0.0.0.0"
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
    state_dir: Path = Path(DEFAULT_STATE_DIR)
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
) -> Config:
    """Read, override from the environment, and validate. Raises ConfigError (one line).

    `protocols`: the protocol registry (warmgate.protocols.adapters()); every command passes it."""
    env = os.environ if environ is None else environ
    source = str(path) if path is not None else "defaults"
    raw: Any = {}
    if path is not None:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read config file: {exc}") from None
        raw = parse_yaml(text, source)
    return validate_config(raw, source, env, protocols=protocols)


def parse_yaml(text: str, source: str) -> Any:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise ConfigError(f"{source}: invalid YAML{where}: {problem}") from None
    except RecursionError:
        raise ConfigError(f"{source}: invalid YAML: nested too deeply") from None
    return {} if raw is None else raw


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
        # YAML scalar rules turn "30" into 30 and "true" into True; pydantic does the rest.
        try:
            node[path[-1]] = yaml.safe_load(value)
        except yaml.YAMLError:
            node[path[-1]] = value
        origins[path] = variable
    return result, origins


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
