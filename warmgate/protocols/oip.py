"""Open Inference Protocol v2 REST (KServe v2): Triton, KServe, MLServer, TorchServe's KServe
mode and warmgate's own modelserver.

    POST /v2/models/{model}[/versions/{version}]/infer
    {"inputs": [{"name": ..., "shape": [batch, ...dims], "datatype": "FP32", "data": [flat]}]}

Data is sent flat (row-major), which every implementation accepts, and as JSON only (no binary
tensor extension), so the body is portable.

Ready needs both the server's and the model's endpoint, because KServe's server-ready is always
true; `shapes: auto` reads the model's metadata (GET /v2/models/{model}).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, get_args
from urllib.parse import quote

import aiohttp

from warmgate.config import AutoShapes, Datatype, ServerConfig, Shape, TensorInput
from warmgate.protocols.base import (
    Adapter,
    InvalidResponse,
    MetadataError,
    Outputs,
    OutputTensor,
    PreparedRequest,
    dumps,
    flatten,
    loads_object,
    loads_result,
)
from warmgate.protocols.health import Endpoint, describe_client_error, excerpt

if TYPE_CHECKING:
    # Annotations only: importing the registry must not load numpy (it runs before the server spawns).
    from warmgate.tensors import Tensor

DATATYPES = frozenset(get_args(Datatype))


def oip_model_path(server: ServerConfig) -> str:
    path = f"/v2/models/{quote(server.model, safe='')}"
    if server.model_version:
        path += f"/versions/{quote(server.model_version, safe='')}"
    return path


class OipAdapter(Adapter):
    name = "oip"

    @property
    def model_url(self) -> str:
        return self.server.url + oip_model_path(self.server)

    def default_readiness_endpoints(self) -> list[Endpoint]:
        return [Endpoint(self.server.url + "/v2/health/ready"), Endpoint(self.model_url + "/ready")]

    def default_liveness_endpoint(self) -> Endpoint:
        return Endpoint(self.server.url + "/v2/health/live")

    def build(self, tensors: Sequence[Tensor], batch_size: int) -> PreparedRequest:
        inputs = [
            {"name": t.name, "shape": list(t.shape), "datatype": t.datatype, "data": t.flat()}
            for t in tensors
        ]
        return PreparedRequest("POST", self.model_url + "/infer", dumps({"inputs": inputs}))

    def parse(self, body: bytes) -> Outputs:
        document = loads_result(body)
        raw_outputs = document.get("outputs")
        if not isinstance(raw_outputs, list) or not raw_outputs:
            raise InvalidResponse("response has no outputs")
        outputs: Outputs = {}
        for index, raw in enumerate(raw_outputs):
            if not isinstance(raw, dict) or "data" not in raw:
                raise InvalidResponse(f"output {index} has no data")
            name = str(raw.get("name", index))
            data, nested_shape = flatten(raw["data"])
            shape = raw.get("shape")
            declared = tuple(int(d) for d in shape) if isinstance(shape, list) else nested_shape
            outputs[name] = OutputTensor(name=name, data=data, shape=declared, datatype=raw.get("datatype"))
        return outputs

    async def discover_shapes(
        self, session: aiohttp.ClientSession, auto: AutoShapes, timeout_s: float
    ) -> list[Shape]:
        url = self.model_url
        try:
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout_s)) as response:
                body = await response.read()
                if response.status != 200:
                    raise MetadataError(f"GET {url}: HTTP {response.status} {excerpt(body)}".rstrip())
        except asyncio.TimeoutError:
            raise MetadataError(f"GET {url}: no answer within {timeout_s:g}s") from None
        except aiohttp.ClientError as exc:
            raise MetadataError(f"GET {url}: {describe_client_error(exc)}") from None
        try:
            metadata = loads_object(body)
        except InvalidResponse:
            raise MetadataError(f"GET {url}: metadata is not JSON: {excerpt(body)}") from None
        return shapes_from_metadata(metadata, auto, url)


def shapes_from_metadata(metadata: Any, auto: AutoShapes, url: str) -> list[Shape]:
    """One shape per configured batch size. A leading -1 is the batch dimension (Triton and KServe
    publish batching models that way); other -1 dims take `auto_shapes.dynamic_dim`."""
    inputs = metadata.get("inputs") if isinstance(metadata, dict) else None
    if not isinstance(inputs, list) or not inputs:
        raise MetadataError(f"GET {url}: model metadata lists no inputs; list shapes in warmup.yaml instead")
    specs: dict[str, TensorInput] = {}
    batched: bool | None = None
    for index, raw in enumerate(inputs):
        if not isinstance(raw, dict) or "name" not in raw or not isinstance(raw.get("shape"), list):
            raise MetadataError(f"GET {url}: metadata input {index} has no name or shape")
        datatype = str(raw.get("datatype", "FP32")).upper()
        if datatype not in DATATYPES:
            raise MetadataError(f"GET {url}: input {raw['name']} has unsupported datatype {datatype}")
        dims = [int(d) for d in raw["shape"]]
        has_batch = bool(dims) and dims[0] == -1
        batched = has_batch if batched is None else batched and has_batch
        if has_batch:
            dims = dims[1:]
        dims = [auto.dynamic_dim if d < 0 else d for d in dims] or [1]
        if any(d == 0 for d in dims):
            raise MetadataError(f"GET {url}: input {raw['name']} has a zero-sized dimension")
        specs[str(raw["name"])] = TensorInput(datatype=datatype, dims=dims, data="random")
    if not batched:
        # Without a batch dimension there is one request shape, whatever the batch sizes say.
        return [Shape(name="auto", batch_size=0, inputs=specs, count=auto.count)]
    return [Shape(name=f"auto-bs{b}", batch_size=b, inputs=specs, count=auto.count) for b in auto.batch_sizes]
