"""Hostile configs: whatever the file or a WARMGATE_* variable holds, loading ends in a Config or in
one ConfigError line naming where, quickly and in bounded memory; and what `check` accepts, `run`
can use (URLs, ports, paths, data files are checked at load).

Every case here failed before issue 12: a traceback (ValueError, KeyError, AttributeError from
PyYAML's constructors), a hang (a FIFO), gigabytes (an alias bomb), or acceptance by `check` of
a value that fails at run time.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from warmgate.config import (
    ENV_OVERRIDES,
    MAX_CONFIG_BYTES,
    Config,
    ConfigError,
    latency_slo_missing,
    load_config,
    validate_config,
)
from warmgate.protocols import adapters

PROTOCOLS = adapters()
pytestmark = pytest.mark.timeout(60)


def load_text(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> Config:
    path = tmp_path / "warmup.yaml"
    path.write_text(text, encoding="utf-8")
    return load_config(path, environ or {}, protocols=PROTOCOLS)


def error(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        load_text(tmp_path, text, environ)
    message = str(caught.value)
    assert "\n" not in message
    return message


def literal_shape(value: str, *, anchor_shape: str = "") -> str:
    """A shape whose literal input's `value:` is `value` (free-form: pydantic never looks inside)."""
    shape = f"  - name: s\n    inputs:\n      x: {{dims: [1], data: literal, value: {value}}}\n"
    return f"shapes:\n{anchor_shape}{shape}"


def anchoring_shape(value: str) -> str:
    """A first shape whose literal value carries an anchor for literal_shape to alias."""
    return f"  - {{name: t, inputs: {{x: {{dims: [1], data: literal, value: {value}}}}}}}\n"


# ---- YAML constructors: one line naming the line -------------------------------------------------

# Before issue 12 the first six raised ValueError, KeyError or AttributeError (a traceback) and the
# control character's error named no line; the rest were already one-line YAMLErrors and stay here
# so that their line numbers keep being reported.
CONSTRUCTOR_ERRORS = {
    "bad timestamp": (
        "server:\n  model: 2001-13-45\n",
        "line 2, column 10: cannot read '2001-13-45' as !!timestamp",
    ),
    "tagged timestamp": (
        "server:\n  model: !!timestamp soon\n",
        "line 2, column 10: cannot read 'soon' as !!timestamp",
    ),
    "int tag on text": ('server:\n  workers: !!int "abc"\n', "line 2, column 12: cannot read 'abc' as !!int"),
    "float tag on text": (
        "gate:\n  p95_ms: !!float fast\n",
        "line 2, column 11: cannot read 'fast' as !!float",
    ),
    "bool tag on text": (
        "load_test:\n  enabled: !!bool maybe\n",
        "line 2, column 12: cannot read 'maybe' as !!bool",
    ),
    "int over 4300 digits": (
        "server:\n  workers: " + "9" * 5000 + "\n",
        "line 2, column 12: cannot read '999",
    ),
    "unknown tag": (
        "server: !python/object:os.system {}\n",
        "line 1, column 9: could not determine a constructor",
    ),
    "local tag": ("server:\n  model: !secret x\n", "line 2, column 10: could not determine a constructor"),
    "binary not ascii": ("server:\n  model: !!binary é\n", "line 2, column 10"),
    "set of a list": ("server: !!set [1]\n", "line 1, column 9"),
    "omap of a mapping": ("server: !!omap {a: 1}\n", "line 1, column 9"),
    "unhashable key": ("server:\n  ? [a]\n  : 1\n", "line 2"),
    "merge of a scalar": ("server: {<<: 5}\n", "line 1, column 14"),
    "undefined alias": ("server: *nowhere\n", "line 1, column 9"),
    "control character": ("server:\n  model: \x07\n", "line 2: control characters are not allowed"),
}


@pytest.mark.parametrize("case", CONSTRUCTOR_ERRORS)
def test_every_yaml_constructor_error_is_one_line_naming_the_line(tmp_path: Path, case: str) -> None:
    text, expected = CONSTRUCTOR_ERRORS[case]
    message = error(tmp_path, text)
    assert message.startswith(f"{tmp_path / 'warmup.yaml'}: invalid YAML at "), message
    assert expected in message, message


def test_timestamps_and_binary_cannot_reach_free_form_fields(tmp_path: Path) -> None:
    # They parse, but a literal value and an http body are sent as JSON: refuse them at load.
    assert "value: must be JSON data" in error(tmp_path, literal_shape("[2001-01-01]"))
    body = "server: {protocol: http, health_path: /h, http: {body: {when: !!binary aGk=}}}\n"
    assert "server.http.body: must be JSON data" in error(tmp_path, body)
    assert "mapping keys must be strings" in error(tmp_path, literal_shape("{1: 2}"))


# ---- aliases: recursion and bombs ----------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "server: &s {http: *s}\n",
        literal_shape("&v [1, *v]"),
        "server: {protocol: http, health_path: /h, http: {body: &b {a: [*b]}}}\n",
    ],
    ids=["mapping", "literal-value", "http-body"],
)
def test_a_self_referencing_alias_is_one_line(tmp_path: Path, text: str) -> None:
    assert "an alias refers to a node that contains it" in error(tmp_path, text)


def billion_laughs(levels: int = 9) -> str:
    """`levels` anchors, each a list of ten aliases to the one before: 10**levels scalars."""
    lines = ["[&l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"&l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, levels)]
    return ", ".join(lines) + "]"


@pytest.mark.parametrize(
    "text",
    [
        literal_shape(billion_laughs()),
        f"server: {{protocol: http, health_path: /h, http: {{body: {billion_laughs()}}}}}\n",
        # Few nodes, long strings: 100 aliases of a 100 kB scalar are 10 MB once expanded.
        literal_shape(
            "[" + ", ".join(["*s"] * 100) + "]",
            anchor_shape=anchoring_shape("&s " + "x" * 100_000),
        ),
    ],
    ids=["literal-value", "http-body", "long-strings"],
)
def test_an_alias_bomb_is_refused_quickly_in_little_memory(tmp_path: Path, text: str) -> None:
    tracemalloc.start()
    started = time.monotonic()
    try:
        message = error(tmp_path, text)
        elapsed = time.monotonic() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "aliases expand this node past 500,000 elements and characters" in message
    assert elapsed < 10
    assert peak < 64 * 1024 * 1024


def test_aliases_that_stay_small_still_work(tmp_path: Path) -> None:
    text = literal_shape(
        "[*row, *row]",
        anchor_shape=anchoring_shape("&row [1, 2, 3]"),
    )
    config = load_text(tmp_path, text)
    assert isinstance(config.shapes, list)
    assert config.shapes[1].inputs["x"].value == [[1, 2, 3], [1, 2, 3]]
    merged = load_text(tmp_path, "drain: &d {quiet_period_s: 1}\npolicy: {on_failure: retry}\n")
    assert merged.drain.quiet_period_s == 1


def test_nesting_through_aliases_is_bounded(tmp_path: Path) -> None:
    # libyaml caps written nesting at 1000; each alias adds a level without adding a bracket.
    chain = "[&n0 [1]" + "".join(f", &n{i} [*n{i - 1}]" for i in range(1, 150)) + "]"
    assert "nested more than 100 levels deep" in error(tmp_path, literal_shape(chain))


# ---- the config file itself ---------------------------------------------------------------------


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "warmup.yaml"
    os.mkfifo(fifo)
    # Opened non-blocking: nobody writes to this FIFO, a blocking open would never return.
    with pytest.raises(ConfigError, match=r"config file must be a regular file, got a FIFO$"):
        load_config(fifo, {})


@pytest.mark.parametrize(
    ("path", "kind"), [("/dev/zero", "a character device"), ("/dev/null", "a character device")]
)
def test_a_device_is_refused(path: str, kind: str) -> None:
    with pytest.raises(ConfigError, match=f"^{path}: config file must be a regular file, got {kind}$"):
        load_config(Path(path), {})


def test_a_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config file must be a regular file, got a directory$"):
        load_config(tmp_path, {})


def test_a_huge_file_is_refused_without_reading_it(tmp_path: Path) -> None:
    huge = tmp_path / "warmup.yaml"
    with huge.open("wb") as file:
        file.truncate(8 * 1024**3)  # sparse: 8 GiB that cost nothing on disk
    started = time.monotonic()
    with pytest.raises(ConfigError, match=r"config file is over 256 KiB"):
        load_config(huge, {})
    assert time.monotonic() - started < 5
    just_fits = tmp_path / "fits.yaml"
    just_fits.write_text("# " + "x" * (MAX_CONFIG_BYTES - 3) + "\n")
    assert load_config(just_fits, {}) == Config()


def test_a_file_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "warmup.yaml"
    path.write_bytes(b"server:\n  model: \xff\xfe\n")
    with pytest.raises(ConfigError, match=r"config file is not UTF-8: invalid start byte at byte 17$"):
        load_config(path, {})


def test_a_path_with_a_nul_byte_is_one_line() -> None:
    with pytest.raises(ConfigError, match="cannot read config file: embedded null byte"):
        load_config(Path("warm\0up.yaml"), {})


# ---- what run uses is validated at load ----------------------------------------------------------

RUN_TIME_FAILURES = {
    "port over 65535": ("server: {url: 'http://127.0.0.1:99999'}", "server.url: port must be 1-65535"),
    "port 0": ("server: {url: 'http://127.0.0.1:0'}", "server.url: port must be 1-65535"),
    "port not a number": ("server: {url: 'http://127.0.0.1:80a'}", "server.url: cannot parse it"),
    "no host": ("server: {url: 'http://:8000'}", "server.url: needs a host"),
    "broken IPv6": ("server: {url: 'http://[::1:8000'}", "server.url: cannot parse it: Invalid IPv6 URL"),
    "query swallows paths": ("server: {url: 'http://h:1/?a=b'}", "server.url: must not have a query"),
    "control character in url": ('server: {url: "http://h:1/\\x1b"}', "server.url: must not contain control"),
    "NUL in state_dir": ('state_dir: "/var/run/warm\\0gate"', "state_dir: must not contain a NUL byte"),
    "NUL in command": ('server: {command: ["serve\\0"]}', "server.command: must not contain a NUL byte"),
    "NUL in probe host": ('probe: {host: "0.0.0.0\\0"}', "probe.host: must not contain a NUL byte"),
    "NUL in data file": (
        'shapes: [{name: a, inputs: {x: {dims: [1], data: file, file: "a\\0b"}}}]',
        "shapes[0].inputs.x.file: must not contain a NUL byte",
    ),
    "CRLF in a header": (
        'server: {protocol: http, health_path: /h, http: {headers: {X-A: "1\\r\\nX-B: 2"}}}',
        "server.http.headers: header X-A: value must not contain CR, LF or NUL",
    ),
    "header name not a token": (
        "server: {protocol: http, health_path: /h, http: {headers: {'X A': '1'}}}",
        "server.http.headers: header name 'X A' is not an HTTP token",
    ),
    "newline in a path": ('server: {health_path: "/ready\\n"}', "server.health_path: must match"),
    "infinite timeout": (
        "server: {start_timeout_s: .inf}",
        "server.start_timeout_s: input should be a finite number",
    ),
    "NaN threshold": ("gate: {p95_ms: .nan}", "gate.p95_ms: input should be a finite number"),
    "a billion workers": ("load_test: {concurrency: 1000000000}", "load_test.concurrency: must be <= 10000"),
}


@pytest.mark.parametrize("case", RUN_TIME_FAILURES)
def test_values_that_would_fail_at_run_time_fail_at_load(tmp_path: Path, case: str) -> None:
    text, expected = RUN_TIME_FAILURES[case]
    message = error(tmp_path, text + "\n")
    assert message.startswith(f"{tmp_path / 'warmup.yaml'}: "), message
    assert expected in message, message


def file_input(path: Path | str, budget: int | None = None) -> str:
    warmup = f"warmup: {{max_payload_bytes: {budget}}}\n" if budget else ""
    return warmup + f"shapes: [{{name: a, inputs: {{x: {{dims: [4], data: file, file: '{path}'}}}}}}]\n"


def test_a_data_file_within_the_budget_loads(tmp_path: Path) -> None:
    data = tmp_path / "input.bin"
    data.write_bytes(bytes(16))
    config = load_text(tmp_path, file_input(data))
    assert isinstance(config.shapes, list)
    assert config.shapes[0].inputs["x"].file == data


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/dev/zero", "must be a regular file, got a character device '/dev/zero'"),
        ("{tmp}", "must be a regular file, got a directory"),
        ("{tmp}/missing.bin", "no such file"),
        ("{tmp}/fifo", "must be a regular file, got a FIFO"),
        ("{tmp}/huge.bin", "8589934592 bytes is over warmup.max_payload_bytes (67108864)"),
    ],
    ids=["dev-zero", "directory", "missing", "fifo", "8-GiB"],
)
def test_a_data_file_that_run_could_not_read_fails_at_load(
    tmp_path: Path, target: str, expected: str
) -> None:
    os.mkfifo(tmp_path / "fifo")
    with (tmp_path / "huge.bin").open("wb") as file:
        file.truncate(8 * 1024**3)
    message = error(tmp_path, file_input(target.format(tmp=tmp_path)))
    assert message.startswith(f"{tmp_path / 'warmup.yaml'}: shapes[0].inputs.x.file: "), message
    assert expected in message, message


def test_the_data_file_budget_is_max_payload_bytes(tmp_path: Path) -> None:
    data = tmp_path / "input.bin"
    data.write_bytes(bytes(4096))
    assert "4096 bytes is over warmup.max_payload_bytes (4095)" in error(tmp_path, file_input(data, 4095))
    assert load_text(tmp_path, file_input(data, 4096)).warmup.max_payload_bytes == 4096


def test_the_probe_loads_without_checking_data_files(tmp_path: Path) -> None:
    # The sidecar never sends the warmup; its container need not mount the data.
    path = tmp_path / "warmup.yaml"
    path.write_text(file_input(tmp_path / "only-in-the-model-container.bin"))
    config = load_config(path, {}, protocols=PROTOCOLS, check_files=False)
    assert isinstance(config.shapes, list)
    with pytest.raises(ConfigError, match="no such file"):
        load_config(path, {}, protocols=PROTOCOLS)


# ---- WARMGATE_* variables -----------------------------------------------------------------------

HOSTILE_ENV_VALUES = [
    '!!int "abc"',
    "!!binary @@@",
    "!!timestamp 2001-13-45",
    "!foo bar",
    "!!float nope",
    "!!set [1]",
    "9" * 5000,
    "&a [*a]",
    billion_laughs(),
    "2001-13-45",
    "\0",
    "x" * (MAX_CONFIG_BYTES + 1),
    "http://127.0.0.1:99999",
    ".inf",
    "[1",
]


@pytest.mark.parametrize("variable", ENV_OVERRIDES)
def test_hostile_environment_values_give_one_line_naming_the_variable(variable: str) -> None:
    for value in HOSTILE_ENV_VALUES:
        started = time.monotonic()
        try:
            validate_config({}, "warmup.yaml", {variable: value}, protocols=PROTOCOLS)
        except ConfigError as exc:
            message = str(exc)
            assert "\n" not in message
            assert message.startswith(f"{variable} ("), message
        assert time.monotonic() - started < 5, value[:40]


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("WARMGATE_WORKERS", '!!int "abc"', "WARMGATE_WORKERS (server.workers): cannot read 'abc' as !!int"),
        (
            "WARMGATE_MODEL",
            "!!binary aGk=",
            "WARMGATE_MODEL (server.model): a tagged value must be a plain scalar",
        ),
        ("WARMGATE_MODEL", "!foo bar", "WARMGATE_MODEL (server.model): could not determine a constructor"),
        (
            "WARMGATE_SERVER_URL",
            "http://127.0.0.1:99999",
            "WARMGATE_SERVER_URL (server.url): port must be 1-65535",
        ),
        ("WARMGATE_STATE_DIR", "/run/\0", "WARMGATE_STATE_DIR (state_dir): must not contain a NUL byte"),
        (
            "WARMGATE_START_TIMEOUT",
            ".inf",
            "WARMGATE_START_TIMEOUT (server.start_timeout_s): input should be a finite",
        ),
        ("WARMGATE_WORKERS", "9" * 5000, "WARMGATE_WORKERS (server.workers): unable to parse input string"),
    ],
)
def test_environment_errors_say_what_is_wrong(variable: str, value: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        validate_config({}, "warmup.yaml", {variable: value}, protocols=PROTOCOLS)
    assert str(caught.value).startswith(expected), str(caught.value)


def test_untagged_environment_values_that_look_like_yaml_stay_strings() -> None:
    # An implicit timestamp or a broken flow list is the string the operator wrote.
    environ = {"WARMGATE_MODEL": "2001-13-45", "WARMGATE_STATE_DIR": "2001-01-01"}
    config = validate_config({}, "warmup.yaml", environ, protocols=PROTOCOLS)
    assert (config.server.model, str(config.state_dir)) == ("2001-13-45", "2001-01-01")
    assert validate_config({}, "w", {"WARMGATE_WORKERS": "!!int 4"}).server.workers == 4


# ---- property-based: documents with tags, anchors, aliases and timestamps -------------------------

TAGGED_SCALARS = st.sampled_from(
    [
        "2001-13-45", "2001-12-14t21:59:43.10-05:00", "2002-02-30", "!!timestamp x", "!!int abc",
        "!!int 7", "!!float x", "!!bool maybe", "!!null", "!!str 5", "!!binary aGk=", "!!binary é",
        "!!set {a, b}", "!!omap [{a: 1}]", "!!pairs [{a: 1}]", "!foo x", "!!python/name:os.system",
        "9" * 4400, "0x1F", "0o17", "1_000", ".inf", "-.inf", ".nan", "~", "null", "yes", "on",
        "'\\0'", '"\\0"', '"\\u0000"', "é", "{}", "[]", "http://h:99999", "/dev/zero",
    ]
)  # fmt: skip
KEYS = st.sampled_from(
    [
        "server", "url", "command", "model", "protocol", "http", "body", "headers", "health_path",
        "shapes", "name", "inputs", "x", "dims", "data", "value", "file", "datatype", "state_dir",
        "load_test", "concurrency", "gate", "p95_ms", "warmup", "probe", "host", "port", "<<",
    ]
)  # fmt: skip


@st.composite
def yaml_documents(draw: st.DrawFn) -> str:
    """Flow-style YAML built from tagged scalars, anchors and aliases (defined or not, back or forward)."""
    anchors: list[str] = []

    def node(depth: int) -> str:
        kind = draw(st.sampled_from(["scalar", "alias", "list", "map"] if depth < 4 else ["scalar", "alias"]))
        if kind == "alias":
            names = [*anchors, "nowhere"]
            return "*" + draw(st.sampled_from(names))
        if kind == "scalar":
            text = draw(st.one_of(TAGGED_SCALARS, st.integers(-3, 70000).map(str)))
        elif kind == "list":
            text = "[" + ", ".join(node(depth + 1) for _ in range(draw(st.integers(0, 4)))) + "]"
        else:
            pairs = [f"{draw(KEYS)}: {node(depth + 1)}" for _ in range(draw(st.integers(0, 4)))]
            text = "{" + ", ".join(pairs) + "}"
        if draw(st.integers(0, 3)) == 0:
            name = f"a{len(anchors)}"
            # Registered before the children are drawn in YAML, so an alias inside may recurse.
            anchors.append(name)
            text = f"&{name} {text}"
        return text

    top = [f"{draw(KEYS)}: {node(0)}" for _ in range(draw(st.integers(1, 5)))]
    return "{" + ", ".join(top) + "}\n"


@settings(max_examples=400, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(text=yaml_documents())
def test_yaml_with_tags_anchors_and_aliases_loads_or_is_one_config_error(
    tmp_path_factory: pytest.TempPathFactory, text: str
) -> None:
    path = tmp_path_factory.mktemp("cfg") / "warmup.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        config = load_config(path, {}, protocols=PROTOCOLS)
    except ConfigError as exc:
        assert "\n" not in str(exc)
        assert str(exc).startswith(str(path))
    else:
        # What loads can be printed by `warmgate check`.
        yaml.safe_dump(config.model_dump(mode="json"))


ENV_VALUES = st.one_of(TAGGED_SCALARS, st.text(max_size=30), st.sampled_from(HOSTILE_ENV_VALUES))


@settings(max_examples=400, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(
    environ=st.dictionaries(st.sampled_from(sorted(ENV_OVERRIDES)), ENV_VALUES, max_size=len(ENV_OVERRIDES))
)
def test_every_warmgate_variable_gives_a_config_or_one_config_error(environ: dict[str, str]) -> None:
    try:
        config = validate_config({}, "warmup.yaml", environ, protocols=PROTOCOLS)
    except ConfigError as exc:
        message = str(exc)
        assert "\n" not in message
        assert message.split(" ", 1)[0] in environ, message
    else:
        yaml.safe_dump(config.model_dump(mode="json"))


# ---- `warmgate check`: the real CLI --------------------------------------------------------------


def check(config: Path, *env: tuple[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "warmgate", "check", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("WARMGATE_")}, **dict(env)},
        check=False,
    )


@pytest.mark.parametrize(
    "text",
    [
        "server:\n  model: 2001-13-45\n",
        'server:\n  workers: !!int "abc"\n',
        literal_shape(billion_laughs()),
        "server: {url: 'http://127.0.0.1:99999'}\n",
    ],
    ids=["timestamp", "int-tag", "alias-bomb", "port"],
)
def test_check_exits_2_with_one_line_and_no_traceback(tmp_path: Path, text: str) -> None:
    path = tmp_path / "warmup.yaml"
    path.write_text(text)
    done = check(path)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr


def test_check_on_a_fifo_exits_2_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "warmup.yaml"
    os.mkfifo(fifo)
    assert stat.S_ISFIFO(fifo.stat().st_mode)
    done = check(fifo)
    assert (done.returncode, done.stderr.strip()) == (
        2,
        f"warmgate: {fifo}: config file must be a regular file, got a FIFO",
    )


def test_check_warns_when_the_gate_has_no_latency_slo(tmp_path: Path) -> None:
    path = tmp_path / "warmup.yaml"
    path.write_text("gate: {max_error_rate: 0}\n")
    done = check(path)
    assert done.returncode == 0, done.stderr
    [warning] = done.stderr.splitlines()
    assert "WARNING no latency SLO is set (gate.p95_ms, gate.p99_ms): the gate judges warmth" in warning
    # stdout stays the effective config alone, unchanged by the warning.
    assert Config.model_validate(yaml.safe_load(done.stdout)) == load_config(path, {})

    path.write_text("gate: {p95_ms: 250}\n")
    done = check(path)
    assert (done.returncode, done.stderr) == (0, "")
    assert yaml.safe_load(done.stdout)["gate"]["p95_ms"] == 250


def test_an_slo_without_a_load_test_is_named_too() -> None:
    assert latency_slo_missing(validate_config({"gate": {"p99_ms": 100}}, "w", {})) is None
    unmeasured = validate_config({"gate": {"p99_ms": 100}, "load_test": {"enabled": False}}, "w", {})
    assert latency_slo_missing(unmeasured) == (
        "a latency SLO is set but load_test.enabled is false: the SLO is never judged"
    )
    assert "no latency SLO is set" in str(latency_slo_missing(Config()))
