"""`warmgate check` on the generic HTTP template (protocol http), the real CLI in a subprocess: a
template that `run` could not fill is refused at once with exit 2 and one line naming the YAML
path; a good one is accepted and printed so that it loads back the same.

Issue 13: `check` accepted a path holding `{{batch_size}}` and every request then failed at run time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from warmgate import exitcodes
from warmgate.config import load_config
from warmgate.protocols import adapters

pytestmark = pytest.mark.timeout(60)

SERVER = """\
server:
  url: http://127.0.0.1:8000
  protocol: http
  health_path: /health
  http:
{http}
shapes:
  - name: bs8
    batch_size: 8
    inputs:
      x: {{datatype: FP32, dims: [3]}}
"""


def write(tmp_path: Path, http: str) -> Path:
    path = tmp_path / "warmup.yaml"
    path.write_text(SERVER.format(http="\n".join(f"    {line}" for line in http.strip().splitlines())))
    return path


def warmgate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "warmgate", *args],
        capture_output=True,
        text=True,
        timeout=50,
        env={key: value for key, value in os.environ.items() if not key.startswith("WARMGATE_")},
        check=False,
    )


@pytest.mark.parametrize(
    ("http", "line"),
    [
        (
            "path: /infer?batch={{batchsize}}",
            "server.http.path: unknown placeholder {{batchsize}}; known here: {{batch_size}}, {{value:NAME}}",
        ),
        (
            "headers: {X-Rows: '{{input:x}}'}",
            "server.http.headers.X-Rows: {{input:x}} cannot stand in a header value (a tensor or a shape is "
            "JSON, which only a body string that is exactly the placeholder takes); allowed there: "
            "{{batch_size}}, {{value:NAME}}",
        ),
        (
            "body: {prompt: 'say {{value:text}}'}",
            "shapes[0].inputs: no input 'text', which server.http.body.prompt ({{value:text}}) names "
            "(this shape has 'x')",
        ),
        (
            "expect: [{field: batch, equals: '{{batch_size}}', length: 8}]",
            "server.http.expect[0]: needs exactly one of equals, length; got equals, length",
        ),
    ],
    ids=["unknown-in-query", "tensor-in-header", "input-no-shape-has", "two-comparisons"],
)
def test_check_refuses_a_template_run_could_not_fill(tmp_path: Path, http: str, line: str) -> None:
    path = write(tmp_path, http)
    done = warmgate("check", "-c", str(path))
    assert (done.returncode, done.stdout) == (exitcodes.CONFIG_ERROR, "")
    assert done.stderr == f"warmgate: {path}: {line}\n"


def test_check_accepts_placeholders_in_the_query_headers_and_text_and_prints_them_back(
    tmp_path: Path,
) -> None:
    path = write(
        tmp_path,
        """
path: /infer?batch={{batch_size}}
headers: {X-Batch: '{{batch_size}}'}
body: {rows: '{{input:x}}', note: 'batch of {{batch_size}}'}
expect:
  - {field: batch, equals: '{{batch_size}}'}
  - {field: predictions, length: '{{batch_size}}'}
""",
    )
    done = warmgate("check", "-c", str(path))
    assert done.returncode == 0, done.stderr
    printed = yaml.safe_load(done.stdout)
    assert printed["server"]["http"]["path"] == "/infer?batch={{batch_size}}"
    assert printed["server"]["http"]["expect"][1] == {
        "field": "predictions",
        "equals": None,
        "length": "{{batch_size}}",
    }
    # What check prints is a config that loads back as the same one.
    again = tmp_path / "printed.yaml"
    again.write_text(done.stdout)
    assert load_config(again, {}, protocols=adapters()) == load_config(path, {}, protocols=adapters())


def test_schema_lists_the_expectations() -> None:
    done = warmgate("schema")
    assert done.returncode == 0, done.stderr
    schema = json.loads(done.stdout)
    assert schema["$defs"]["HttpTemplate"]["properties"]["expect"]["items"] == {"$ref": "#/$defs/Expectation"}
    assert set(schema["$defs"]["Expectation"]["properties"]) == {"field", "equals", "length"}
