"""Model-server images that are not warmgate's, built locally for the injected and sidecar tests.

- `nginx`: Debian bookworm minbase + nginx and no Python at all, answering the Open Inference
  Protocol's health, metadata and infer paths of model `fixed` with fixed bodies (the infer answer
  matches the one warmup shape `foreign_warmup` sends: FP32 [1, 4] in, FP32 [1, 2] out).
- `mlserver`: Debian's python3 (3.11) + MLServer 1.7.1 from PyPI serving a real (if tiny) model:
  a numpy linear classifier through a custom runtime, model `tiny`, FP32 [batch, 4] -> [batch, 3].

Each builder takes the podman/buildah `Tools`, writes its build context, and returns the image tag,
`<repository>:<hash of the context and base>`: built once per container store and reused while
its inputs are unchanged. `ForeignServer` says how to run each one (command, port, model, user)
and `foreign_warmup` gives the warmup.yaml that warms it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.deploy.podman import BASE_PACKAGES, BASE_REPOSITORY, Tools, build_image, ensure_debian_image

NGINX_BASE_REPOSITORY = "localhost/warmgate-test-nginx-base"
NGINX_PACKAGES = ("nginx-light",)
NGINX_REPOSITORY = "localhost/warmgate-test-foreign-nginx"
MLSERVER_REPOSITORY = "localhost/warmgate-test-foreign-mlserver"
MLSERVER_REQUIREMENT = "mlserver==1.7.1"
# The uid both images run their server as (the chart's runAsUser): neither needs root.
SERVER_USER = "10001:10001"

NGINX_PORT = 8000
NGINX_MODEL = "fixed"
# The fixed infer answer: one FP32 [1, 2] output, as a one-input [1, 4] model would give.
NGINX_INFER_ANSWER = {
    "model_name": NGINX_MODEL,
    "outputs": [{"name": "OUTPUT0", "datatype": "FP32", "shape": [1, 2], "data": [0.25, 0.75]}],
}
NGINX_METADATA = {
    "name": NGINX_MODEL,
    "platform": "fixed-bodies",
    "inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [-1, 4]}],
    "outputs": [{"name": "OUTPUT0", "datatype": "FP32", "shape": [-1, 2]}],
}

MLSERVER_PORT = 8080
MLSERVER_MODEL = "tiny"


@dataclass(frozen=True)
class ForeignServer:
    """How to run one foreign image's server: its command (the image's CMD), where it listens,
    its model, the uid it runs as, and the warmup shapes that fit its model."""

    name: str
    build: Callable[[Tools, Path], str]
    command: tuple[str, ...]
    port: int
    model: str
    user: str
    shapes: tuple[dict[str, Any], ...]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def nginx_conf() -> str:
    def fixed(path: str, body: dict[str, Any]) -> str:
        # nginx quotes: the JSON holds no single quotes, so it goes in as one literal.
        return f"        location = {path} {{ return 200 '{json.dumps(body)}'; }}\n"

    model = f"/v2/models/{NGINX_MODEL}"
    return (
        "# OIP with fixed bodies; runs as any uid (every writable path is under /tmp).\n"
        "worker_processes 1;\n"
        "pid /tmp/nginx.pid;\n"
        "error_log stderr warn;\n"
        "events { worker_connections 512; }\n"
        "http {\n"
        "    access_log off;\n"
        "    default_type application/json;\n"
        "    client_body_temp_path /tmp/nginx-body;\n"
        "    proxy_temp_path /tmp/nginx-proxy;\n"
        "    fastcgi_temp_path /tmp/nginx-fastcgi;\n"
        "    uwsgi_temp_path /tmp/nginx-uwsgi;\n"
        "    scgi_temp_path /tmp/nginx-scgi;\n"
        "    server {\n"
        f"        listen {NGINX_PORT};\n"
        + fixed("/v2/health/live", {"live": True})
        + fixed("/v2/health/ready", {"ready": True})
        + fixed(f"{model}/ready", {"name": NGINX_MODEL, "ready": True})
        + fixed(model, NGINX_METADATA)
        + fixed(f"{model}/infer", NGINX_INFER_ANSWER)
        + '        location / { return 404 \'{"error": "not found"}\'; }\n'
        "    }\n"
        "}\n"
    )


NGINX_COMMAND = ("nginx", "-e", "stderr", "-c", "/etc/nginx-oip/nginx.conf", "-g", "daemon off;")


def build_nginx_image(tools: Tools, workdir: Path) -> str:
    """nginx on Debian minbase, no Python in the image (the build fails if python3 is present)."""
    base = ensure_debian_image(tools, NGINX_BASE_REPOSITORY, NGINX_PACKAGES, workdir)
    context = workdir / "nginx-context"
    context.mkdir(parents=True, exist_ok=True)
    (context / "nginx.conf").write_text(nginx_conf())
    (context / "Containerfile").write_text(
        f"FROM {base}\n"
        "COPY nginx.conf /etc/nginx-oip/nginx.conf\n"
        "RUN if command -v python3 python3.11 python; then echo 'python found' >&2; exit 1; fi \\\n"
        # The check runs as root and leaves a pid file and temp dirs the server's uid could not reuse.
        "    && nginx -t -e stderr -c /etc/nginx-oip/nginx.conf && rm -rf /tmp/nginx*\n"
        f"USER {SERVER_USER}\n"
        f"EXPOSE {NGINX_PORT}\n"
        f"CMD {json.dumps(list(NGINX_COMMAND))}\n"
    )
    files = [context / "Containerfile", context / "nginx.conf"]
    return build_image(tools, NGINX_REPOSITORY, context, files, build_args=(f"BASE={base}",), timeout=300)


# The MLServer custom runtime: a linear classifier whose weights are fixed by a seed, numpy only.
# MLServer imports it from the model folder (model-settings.json names tiny_runtime.TinyLinear).
TINY_RUNTIME = '''\
"""A tiny linear classifier for MLServer: logits = x @ W + b, FP32 [batch, 4] -> [batch, 3]."""

import numpy as np
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class TinyLinear(MLModel):
    async def load(self) -> bool:
        rng = np.random.default_rng(7)
        self._weights = rng.standard_normal((4, 3)).astype(np.float32)
        self._bias = rng.standard_normal(3).astype(np.float32)
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        array = NumpyCodec.decode_input(payload.inputs[0]).astype(np.float32, copy=False)
        logits = array.reshape(-1, 4) @ self._weights + self._bias
        return InferenceResponse(model_name=self.name, outputs=[NumpyCodec.encode_output("logits", logits)])
'''


def mlserver_settings() -> dict[str, Any]:
    return {
        "host": "127.0.0.1",
        "http_port": MLSERVER_PORT,
        "grpc_port": MLSERVER_PORT + 1,
        "metrics_port": MLSERVER_PORT + 2,
        "debug": False,
        # MLServer 1.7.1's parallel inference workers die at start with the uvloop that pip
        # resolves today (see bench/gate_effect.py); inference in the main process avoids the pool.
        "parallel_workers": 0,
    }


def mlserver_model_settings() -> dict[str, Any]:
    return {
        "name": MLSERVER_MODEL,
        "implementation": "tiny_runtime.TinyLinear",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 3]}],
    }


MLSERVER_COMMAND = ("/opt/mlserver/bin/mlserver", "start", "/models")


def build_mlserver_image(tools: Tools, workdir: Path) -> str:
    """Debian python3 + MLServer from PyPI in its own venv, serving the tiny model from /models."""
    base = ensure_debian_image(tools, BASE_REPOSITORY, BASE_PACKAGES, workdir)
    context = workdir / "mlserver-context"
    (context / "models" / MLSERVER_MODEL).mkdir(parents=True, exist_ok=True)
    (context / "models" / "settings.json").write_text(json.dumps(mlserver_settings(), indent=2))
    model_dir = context / "models" / MLSERVER_MODEL
    (model_dir / "model-settings.json").write_text(json.dumps(mlserver_model_settings(), indent=2))
    (model_dir / "tiny_runtime.py").write_text(TINY_RUNTIME)
    (context / "Containerfile").write_text(
        f"FROM {base}\n"
        "ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1 HOME=/tmp\n"
        "RUN python3 -m venv /opt/mlserver \\\n"
        f"    && /opt/mlserver/bin/pip install --quiet '{MLSERVER_REQUIREMENT}' \\\n"
        "    && /opt/mlserver/bin/mlserver --help >/dev/null\n"
        "COPY models /models\n"
        f"USER {SERVER_USER}\n"
        "WORKDIR /tmp\n"
        f"EXPOSE {MLSERVER_PORT}\n"
        f"CMD {json.dumps(list(MLSERVER_COMMAND))}\n"
    )
    files = [path for path in context.rglob("*") if path.is_file()]
    return build_image(tools, MLSERVER_REPOSITORY, context, files, build_args=(f"BASE={base}",), timeout=900)


NGINX = ForeignServer(
    name="nginx",
    build=build_nginx_image,
    command=NGINX_COMMAND,
    port=NGINX_PORT,
    model=NGINX_MODEL,
    user=SERVER_USER,
    shapes=(
        {
            "name": "bs1",
            "batch_size": 1,
            "inputs": {"INPUT0": {"datatype": "FP32", "dims": [4], "data": "zero"}},
        },
    ),
)
MLSERVER = ForeignServer(
    name="mlserver",
    build=build_mlserver_image,
    command=MLSERVER_COMMAND,
    port=MLSERVER_PORT,
    model=MLSERVER_MODEL,
    user=SERVER_USER,
    shapes=tuple(
        {
            "name": f"bs{batch}",
            "batch_size": batch,
            "inputs": {"input": {"datatype": "FP32", "dims": [4], "data": "random"}},
            "count": 4,
        }
        for batch in (1, 4)
    ),
)
FOREIGN_SERVERS = (NGINX, MLSERVER)


def foreign_warmup(
    server: ForeignServer, *, load_duration_s: float = 2.0, quiet_period_s: float = 3.0
) -> dict[str, Any]:
    """A warmup.yaml (as a dict) that warms `server` over loopback; no state_dir (the
    WARMGATE_STATE_DIR of the container decides). The gate tolerates this shared machine's noise:
    the thresholds have their own tests; here the point is the path through foreign images."""
    return {
        "server": {
            "command": list(server.command),
            "url": server.url,
            "protocol": "oip",
            "model": server.model,
            "start_timeout_s": 240,
            "request_timeout_s": 30,
        },
        "shapes": [dict(shape) for shape in server.shapes],
        "load_test": {"mode": "closed", "duration_s": load_duration_s, "concurrency": 2},
        "gate": {"max_error_rate": 0.0, "max_first_to_steady_ratio": 1000.0},
        "drain": {"quiet_period_s": quiet_period_s, "grace_period_s": 20},
        "policy": {"on_failure": "exit"},
    }
