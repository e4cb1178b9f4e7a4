"""warmup.yaml: valid configs load, every bad one gives one line naming the path and value."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from warmgate.config import Config, ConfigError, json_schema, load_config, validate_config
from warmgate.protocols import adapters, make_adapter

REPO = Path(__file__).resolve().parents[1]
# The protocol registry, as every command passes it to the config.
PROTOCOLS = adapters()


def load_text(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> Config:
    path = tmp_path / "warmup.yaml"
    path.write_text(text)
    return load_config(path, environ or {}, protocols=PROTOCOLS)


@pytest.mark.parametrize(
    "path", [REPO / "warmup.yaml", *sorted((REPO / "examples").glob("*.yaml"))], ids=lambda p: p.name
)
def test_shipped_configs_load(path: Path) -> None:
    config = load_config(path, {}, protocols=PROTOCOLS)
    # Each protocol's own URL schemes (base.Adapter.url_schemes) are what the file uses.
    assert config.server.url.split("://")[0] in PROTOCOLS[config.server.protocol].url_schemes


def test_empty_file_means_all_defaults(tmp_path: Path) -> None:
    config = load_text(tmp_path, "")
    assert config == Config()
    assert config.state_dir == Path("/var/run/warmgate")
    assert config.probe.port == 8086


def test_triton_style_shape(tmp_path: Path) -> None:
    config = load_text(
        tmp_path,
        """
shapes:
  - name: bs8-text
    batch_size: 8
    count: 3
    weight: 0.5
    inputs:
      ids: {datatype: INT64, dims: [128], data: zero}
      text: {datatype: BYTES, dims: [1], data: text, length: 64, unit: tokens}
      mask: {datatype: BOOL, dims: [128], data: literal, value: true}
""",
    )
    assert isinstance(config.shapes, list)
    shape = config.shapes[0]
    assert (shape.batch_size, shape.count, shape.weight) == (8, 3, 0.5)
    assert shape.inputs["text"].length == 64


def test_shapes_auto(tmp_path: Path) -> None:
    config = load_text(tmp_path, "shapes: auto\nauto_shapes: {batch_sizes: [1, 2]}\n")
    assert config.shapes == "auto"


def test_command_string_is_split_without_a_shell(tmp_path: Path) -> None:
    config = load_text(tmp_path, "server: {command: \"tritonserver --model-repository '/models dir'\"}\n")
    assert config.server.command == ["tritonserver", "--model-repository", "/models dir"]


def test_environment_overrides(tmp_path: Path) -> None:
    config = load_text(
        tmp_path,
        "server: {url: 'http://127.0.0.1:1'}\n",
        {
            "WARMGATE_SERVER_URL": "http://10.0.0.1:8000/",
            "WARMGATE_PROBE_PORT": "9000",
            "WARMGATE_STATE_DIR": "/s",
        },
    )
    assert config.server.url == "http://10.0.0.1:8000"
    assert config.probe.port == 9000
    assert config.state_dir == Path("/s")


INVALID = [
    ("shapes: [{name: a, inputs: {x: {dims: [3, -3]}}}]", "shapes[0].inputs.x.dims[1]: must be > 0, got -3"),
    (
        "shapes: [{name: a, inputs: {x: {dims: []}}}]",
        "shapes[0].inputs.x.dims: must list at least one dimension",
    ),
    ("shapes: [{name: a, inputs: {}}]", "shapes[0].inputs: dictionary should have at least 1 item"),
    ("shapes: [{name: a, batchsize: 2, inputs: {x: {dims: [1]}}}]", "shapes[0].batchsize: unknown field"),
    ("shapes: [{inputs: {x: {dims: [1]}}}]", "shapes[0].name: required field is missing"),
    ("shapes: [{name: 'a b', inputs: {x: {dims: [1]}}}]", "shapes[0].name: must match"),
    (
        "shapes: [{name: a, inputs: {x: {datatype: FP8, dims: [1]}}}]",
        "shapes[0].inputs.x.datatype: must be one of",
    ),
    (
        "shapes: [{name: a, inputs: {x: {dims: [1], data: file}}}]",
        "shapes[0].inputs.x: data: file needs `file`",
    ),
    (
        "shapes: [{name: a, inputs: {x: {dims: [1], data: text, length: 3}}}]",
        "data: text needs datatype BYTES",
    ),
    (
        "shapes: [{name: a, inputs: {x: {dims: [1]}}}, {name: a, inputs: {x: {dims: [1]}}}]",
        "shapes: duplicate shape name 'a'",
    ),
    ("shapes: autox", "shapes: must be one of 'auto', got 'autox'"),
    ("server: {url: 'ftp://x'}", "server.url: must match"),
    (
        "server: {protocol: grpc}",
        "server.protocol: must be one of 'http', 'oip', 'oip-grpc', 'openai', 'tfserving' or 'torchserve'",
    ),
    ("server: {protocol: http}", "server: protocol http needs both server.http"),
    ("server: {start_timeout_s: 0}", "server.start_timeout_s: must be > 0, got 0"),
    ("server: {start_timeout_s: soon}", "server.start_timeout_s: input should be a valid number"),
    ('server: {command: "unterminated \'quote"}', "server.command: cannot split command string"),
    ("load_test: {mode: burst}", "load_test.mode: must be one of"),
    ("gate: {max_error_rate: 2}", "gate.max_error_rate: must be <= 1, got 2"),
    ("probe: {port: 70000}", "probe.port: must be <= 65535, got 70000"),
    ("policy: {on_failure: panic}", "policy.on_failure: must be one of"),
    ("drain: {quiet_period_s: -1}", "drain.quiet_period_s: must be >= 0, got -1"),
    ("- just\n- a list", "top level must be a mapping, got a list"),
    ("server: [\n", "invalid YAML at line 2"),
    ("stateDir: /x", "stateDir: unknown field"),
]


@pytest.mark.parametrize(("text", "expected"), INVALID, ids=[e for _, e in INVALID])
def test_invalid_configs_give_one_line_naming_the_path(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_text(tmp_path, text)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{tmp_path / 'warmup.yaml'}:")
    assert expected in message, message


def test_environment_errors_name_the_variable(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"^WARMGATE_PROBE_PORT \(probe.port\): input should be a valid integer"
    ):
        load_text(tmp_path, "", {"WARMGATE_PROBE_PORT": "eighty"})


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml", {})


def test_environment_protocol_is_checked_against_the_registry(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^WARMGATE_PROTOCOL \(server.protocol\): must be one of 'http', "):
        load_text(tmp_path, "", {"WARMGATE_PROTOCOL": "grpc"})
    assert load_text(tmp_path, "", {"WARMGATE_PROTOCOL": "torchserve"}).server.protocol == "torchserve"


def test_without_the_registry_the_protocol_is_checked_when_the_adapter_is_made() -> None:
    # Library callers that validate without the registry still cannot run an unknown protocol.
    config = validate_config({"server": {"protocol": "grpc"}}, "warmup.yaml", {})
    with pytest.raises(ConfigError, match=r"^server.protocol: must be one of 'http', .*, got 'grpc'$"):
        make_adapter(config.server)


def test_schema_is_json_schema_for_the_same_model() -> None:
    schema = json_schema(protocols=PROTOCOLS)
    assert schema["title"] == "warmgate warmup.yaml"
    assert {"server", "shapes", "load_test", "gate", "state_dir"} <= set(schema["properties"])
    assert schema["$defs"]["ServerConfig"]["properties"]["protocol"]["enum"] == list(PROTOCOLS)


# Arbitrary YAML-shaped documents, biased towards the real keys so validation goes deep.
KEYS = st.sampled_from(
    [
        "server",
        "shapes",
        "inputs",
        "dims",
        "name",
        "url",
        "protocol",
        "load_test",
        "gate",
        "x",
        "count",
        "data",
    ]
)
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 70000), st.floats(allow_nan=True), st.text(max_size=12)
)
DOCUMENTS = st.recursive(
    SCALARS,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(KEYS, children, max_size=4)),
    max_leaves=25,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(document=DOCUMENTS)
def test_arbitrary_documents_never_raise_anything_but_a_one_line_config_error(document: Any) -> None:
    try:
        validate_config(document, "warmup.yaml", {}, protocols=PROTOCOLS)
    except ConfigError as exc:
        assert "\n" not in str(exc)
        assert str(exc).startswith("warmup.yaml")


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=200))
def test_arbitrary_text_never_raises_anything_but_a_config_error(
    tmp_path_factory: pytest.TempPathFactory, text: str
) -> None:
    path = tmp_path_factory.mktemp("cfg") / "warmup.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        load_config(path, {}, protocols=PROTOCOLS)
    except ConfigError as exc:
        assert "\n" not in str(exc)


def test_effective_config_round_trips(tmp_path: Path) -> None:
    config = load_config(REPO / "warmup.yaml", {}, protocols=PROTOCOLS)
    dumped = yaml.safe_dump(config.model_dump(mode="json"))
    assert load_text(tmp_path, dumped) == config
