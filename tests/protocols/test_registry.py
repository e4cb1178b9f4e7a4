"""The registry is the one list of protocols: a module dropped into warmgate/protocols/ is known to
config validation, the JSON schema, the adapter factory and the probe, and nothing else lists them."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import warmgate.protocols
from warmgate.config import ConfigError, json_schema, validate_config
from warmgate.entrypoint.commands import handle_schema
from warmgate.probe.planning import probe_settings
from warmgate.protocols import adapters, make_adapter
from warmgate.protocols.readiness import Endpoint
from warmgate.protocols.registry import RegistryError

REPO = Path(__file__).resolve().parents[2]
CHART_SCHEMA = REPO / "deploy" / "helm" / "warmgate" / "values.schema.json"

# A whole protocol, as a newcomer would add one: one module, nothing else touched.
ECHO_MODULE = """
from warmgate.protocols.answers import json_outputs, loads_object
from warmgate.protocols.base import Adapter, PreparedRequest, dumps
from warmgate.protocols.readiness import Endpoint


class EchoAdapter(Adapter):
    name = "echo"

    @classmethod
    def check_server(cls, server):
        if server.model_version is not None:
            raise ValueError("protocol echo has no model versions (server.model_version)")

    def default_readiness_endpoints(self):
        return [Endpoint(self.server.url + "/echo/ready")]

    def build(self, tensors, batch_size):
        document = {t.name: t.nested() for t in tensors}
        return PreparedRequest("POST", self.server.url + "/echo", dumps(document))

    def parse(self, body):
        return json_outputs(loads_object(body))
"""


@pytest.fixture
def echo_protocol(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """warmgate/protocols/ with one more module in it (a second directory of the package)."""
    (tmp_path / "echo.py").write_text(ECHO_MODULE)
    monkeypatch.setattr(warmgate.protocols, "__path__", [*warmgate.protocols.__path__, str(tmp_path)])
    yield "echo"
    sys.modules.pop("warmgate.protocols.echo", None)


def test_the_shipped_protocols() -> None:
    assert list(adapters()) == ["http", "oip", "oip-grpc", "openai", "tfserving", "torchserve"]
    auto = [name for name, adapter in adapters().items() if adapter.supports_auto_shapes()]
    assert auto == ["oip", "oip-grpc"]
    prompts = [name for name, adapter in adapters().items() if adapter.takes_prompts()]
    assert prompts == ["openai"]


def test_the_schema_and_the_chart_enumerate_exactly_the_registry(capsys: pytest.CaptureFixture[str]) -> None:
    names = list(adapters())
    assert handle_schema(argparse.Namespace()) == 0  # `warmgate schema`
    cli_enum = json.loads(capsys.readouterr().out)["$defs"]["ServerConfig"]["properties"]["protocol"]["enum"]
    chart = json.loads(CHART_SCHEMA.read_text())
    chart_enum = chart["definitions"]["ServerConfig"]["properties"]["protocol"]["enum"]
    assert cli_enum == chart_enum == names


def test_a_new_module_is_a_new_protocol_everywhere(echo_protocol: str) -> None:
    registry = adapters()
    assert echo_protocol in registry
    # config validation accepts it and applies its rules, one line naming the path
    config = validate_config({"server": {"protocol": "echo"}}, "warmup.yaml", {}, protocols=registry)
    with pytest.raises(ConfigError, match=r"^warmup.yaml: server: protocol echo has no model versions"):
        validate_config(
            {"server": {"protocol": "echo", "model_version": "1"}}, "warmup.yaml", {}, protocols=registry
        )
    # it reads no metadata, so `shapes: auto` names the protocols that do
    with pytest.raises(
        ConfigError, match=r"shapes: auto needs server.protocol oip or oip-grpc \(model metadata\), got echo"
    ):
        validate_config(
            {"server": {"protocol": "echo"}, "shapes": "auto"}, "warmup.yaml", {}, protocols=registry
        )
    # the schema lists it, the factory builds it, the probe asks its endpoints
    enum = json_schema(protocols=registry)["$defs"]["ServerConfig"]["properties"]["protocol"]["enum"]
    assert enum == ["echo", "http", "oip", "oip-grpc", "openai", "tfserving", "torchserve"]
    assert type(make_adapter(config.server)).__name__ == "EchoAdapter"
    assert probe_settings(config).ready_endpoints == (Endpoint("http://127.0.0.1:8000/echo/ready"),)


def test_without_the_module_the_protocol_is_unknown() -> None:
    with pytest.raises(ConfigError, match=r"^warmup.yaml: server.protocol: must be one of .*, got 'echo'$"):
        validate_config({"server": {"protocol": "echo"}}, "warmup.yaml", {}, protocols=adapters())


def test_two_modules_claiming_one_name_is_an_error(
    echo_protocol: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    second = tmp_path / "second"
    second.mkdir()
    (second / "echo2.py").write_text(ECHO_MODULE)
    monkeypatch.setattr(warmgate.protocols, "__path__", [*warmgate.protocols.__path__, str(second)])
    try:
        with pytest.raises(RegistryError, match="protocol 'echo' is defined twice"):
            adapters()
    finally:
        sys.modules.pop("warmgate.protocols.echo2", None)


def test_finding_the_protocols_loads_no_numpy() -> None:
    # `warmgate run` validates the config against the registry before it spawns the server, so
    # every import here is start-up latency added to each pod (numpy alone is ~0.1 s cold).
    probe = "import sys; from warmgate.protocols import adapters; adapters(); print('numpy' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "False"
