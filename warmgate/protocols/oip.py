"""Open Inference Protocol v2 REST (KServe v2): Triton, KServe, MLServer, TorchServe's KServe
mode and warmgate's own modelserver.

    POST /v2/models/{model}[/versions/{version}]/infer
    {"inputs": [{"name": ..., "shape": [batch, ...dims], "datatype": "FP32", "data": [flat]}]}

Data is sent flat (row-major), which every implementation accepts, as JSON by default, so the
body is portable. With `server.binary_tensors` requests use Triton's binary tensor extension, as
production clients of Triton do (JSON encoding of a large tensor can cost more than the model):

    Inference-Header-Content-Length: <length of the JSON header>
    {"inputs": [{"name", "shape", "datatype", "parameters": {"binary_data_size": K}}, ...],
     "parameters": {"binary_data_output": true}}<each input's raw bytes, in that order>

An answer is decoded by its own framing, whatever was asked: with the header it is a JSON header
followed by the binary outputs' bytes in order, each such output naming its `binary_data_size`
(outputs without one carry JSON `data`); without it, plain JSON (which the extension allows a
server to answer). The header's length travels in an HTTP response header, not in the body, so
it reaches the decoder on `Result.headers` (`answer_headers`).

Ready needs both the server's and the model's endpoint, because KServe's server-ready is always
true; `shapes: auto` reads the model's metadata (GET /v2/models/{model}).

Answers are checked as typed tensors: a `shape` of at most 64 non-negative integers whose product
is the number of values, a known `datatype` whose values fit it, regular nesting, and (for a
batched request) a leading dimension equal to the batch size. Binary outputs must declare their
`shape` and `datatype`, their sizes must add up to exactly the bytes after the JSON header, and
each output's bytes must be a tensor of its shape (tensors.from_raw). Decoded binary values are
Python values as JSON gives them (answers.raw_values), so the concurrency check compares binary
answers exactly as it compares JSON ones.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, get_args
from urllib.parse import quote

import aiohttp

from warmgate.config import AutoShapes, Datatype, ServerConfig, Shape, TensorInput
from warmgate.protocols.answers import (
    MAX_METADATA_BYTES,
    MAX_RANK,
    InvalidResponse,
    Outputs,
    OutputTensor,
    check_count,
    check_datatype,
    check_values,
    cut,
    declared_shape,
    excerpt,
    flatten,
    json_type,
    loads_object,
    loads_result,
    output_name,
    raw_values,
    read_capped,
    show,
)
from warmgate.protocols.base import (
    Adapter,
    MetadataError,
    PreparedRequest,
    dumps,
)
from warmgate.protocols.health import describe_client_error, fetch
from warmgate.protocols.readiness import Endpoint

if TYPE_CHECKING:
    # Annotations only: importing the registry must not load numpy (it runs before the server spawns).
    from warmgate.tensors import Tensor

DATATYPES = frozenset(get_args(Datatype))
# Triton's binary tensor extension: the length of the JSON header that starts a binary body.
INFERENCE_HEADER = "Inference-Header-Content-Length"
# A byte count is at most this many digits (2**64 has 20).
MAX_COUNT_DIGITS = 20
# How many served models an unknown-model message names.
MAX_LISTED_MODELS = 10


def oip_model_path(server: ServerConfig) -> str:
    path = f"/v2/models/{quote(server.model, safe='')}"
    if server.model_version:
        path += f"/versions/{quote(server.model_version, safe='')}"
    return path


class OipAdapter(Adapter):
    name = "oip"
    answers_lead_with_batch = True
    server_options = frozenset({"binary_tensors"})
    answer_headers = (INFERENCE_HEADER,)

    @property
    def model_url(self) -> str:
        return self.server.url + oip_model_path(self.server)

    def default_readiness_endpoints(self) -> list[Endpoint]:
        return [Endpoint(self.server.url + "/v2/health/ready"), Endpoint(self.model_url + "/ready")]

    def default_liveness_endpoint(self) -> Endpoint:
        return Endpoint(self.server.url + "/v2/health/live")

    async def unknown_model(self, session: aiohttp.ClientSession, timeout_s: float) -> str | None:
        """The server is ready but the model's endpoint says the model does not exist: 404
        (KServe, MLServer, warmgate serve) or 400 (Triton), and the repository index, where the
        server has one, does not list it (a model that is listed is loading, not unknown)."""
        if self.server.health_path is not None:
            return None  # a custom readiness path: its answers mean what the user says
        server_ready, model_ready = await asyncio.gather(
            fetch(session, "GET", self.server.url + "/v2/health/ready", timeout_s),
            fetch(session, "GET", self.model_url + "/ready", timeout_s),
        )
        if not isinstance(server_ready, tuple) or server_ready[0] != 200:
            return None
        if not isinstance(model_ready, tuple) or model_ready[0] not in (400, 404):
            return None
        status, body = model_ready
        index = await fetch(session, "POST", self.server.url + "/v2/repository/index", timeout_s, b"{}")
        served = repository_models(index[1]) if isinstance(index, tuple) and index[0] == 200 else None
        said = f"GET {self.model_url}/ready answers HTTP {status} {excerpt(body)}".rstrip()
        if served is None:
            # No index to ask: only a 404 is unambiguous (Triton's 400 also means "not ready").
            return f"server.model {self.server.model!r} is not served: {said}" if status == 404 else None
        if self.server.model in served:
            return None
        listed = ", ".join(repr(name) for name in served[:MAX_LISTED_MODELS]) or "no models"
        more = f" and {len(served) - MAX_LISTED_MODELS} more" if len(served) > MAX_LISTED_MODELS else ""
        return f"server.model {self.server.model!r} is not served: {said}; the server serves {listed}{more}"

    def build(self, tensors: Sequence[Tensor], batch_size: int) -> PreparedRequest:
        if self.server.binary_tensors:
            return self.build_binary(tensors, batch_size)
        inputs = [
            {"name": t.name, "shape": list(t.shape), "datatype": t.datatype, "data": t.flat()}
            for t in tensors
        ]
        return PreparedRequest(
            "POST", self.model_url + "/infer", dumps({"inputs": inputs}), batch_size=batch_size
        )

    def build_binary(self, tensors: Sequence[Tensor], batch_size: int) -> PreparedRequest:
        """The binary tensor extension: a JSON header naming each input's size, then the inputs'
        raw contents in the header's order; every output asked for as binary data."""
        from warmgate.tensors import to_raw  # numpy: not at import time (see TYPE_CHECKING above)

        contents = [to_raw(t.datatype, t.array) for t in tensors]
        inputs = [
            {
                "name": t.name,
                "shape": list(t.shape),
                "datatype": t.datatype,
                "parameters": {"binary_data_size": len(raw)},
            }
            for t, raw in zip(tensors, contents, strict=True)
        ]
        header = dumps({"inputs": inputs, "parameters": {"binary_data_output": True}})
        headers = {"Content-Type": "application/octet-stream", INFERENCE_HEADER: str(len(header))}
        return PreparedRequest(
            "POST",
            self.model_url + "/infer",
            b"".join([header, *contents]),
            headers=headers,
            batch_size=batch_size,
        )

    def parse(self, body: bytes) -> Outputs:
        return outputs_of(loads_result(body), None)

    def parse_answer(self, body: bytes, headers: Mapping[str, str]) -> Outputs:
        declared = headers.get(INFERENCE_HEADER)
        if declared is None:
            return self.parse(body)
        length = json_header_length(declared, len(body))
        return outputs_of(loads_result(body[:length]), memoryview(body)[length:])

    def describe_answer(self, body: bytes, headers: Mapping[str, str]) -> str:
        # A binary answer's excerpt is its JSON header: the bytes after it are not text (and may
        # hold line breaks or terminal escapes, which a one-line reason must not).
        declared = headers.get(INFERENCE_HEADER)
        if declared is None:
            return excerpt(body)
        try:
            length = json_header_length(declared, len(body))
        except InvalidResponse:
            return f"({len(body):,} bytes, {INFERENCE_HEADER} {show(declared)})"
        binary = f" (+{len(body) - length:,} bytes of binary data)" if length < len(body) else ""
        return excerpt(body[:length]) + binary

    async def discover_shapes(
        self, session: aiohttp.ClientSession, auto: AutoShapes, timeout_s: float
    ) -> list[Shape]:
        url = self.model_url
        try:
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout_s)) as response:
                body = await read_capped(response, MAX_METADATA_BYTES)
                if response.status != 200:
                    raise MetadataError(f"GET {url}: HTTP {response.status} {excerpt(body)}".rstrip())
        except asyncio.TimeoutError:
            raise MetadataError(f"GET {url}: no answer within {timeout_s:g}s") from None
        except aiohttp.ClientError as exc:
            raise MetadataError(f"GET {url}: {describe_client_error(exc)}") from None
        except InvalidResponse as exc:
            raise MetadataError(f"GET {url}: metadata {exc}") from None
        try:
            metadata = loads_object(body)
        except InvalidResponse as exc:
            raise MetadataError(f"GET {url}: metadata is unusable: {exc}: {excerpt(body)}") from None
        return shapes_from_metadata(metadata, auto, url)


def json_header_length(declared: str, body_size: int) -> int:
    """The JSON header's length from Inference-Header-Content-Length: a decimal byte count
    within the body."""
    text = declared.strip()
    if not (text.isascii() and text.isdigit()) or len(text) > MAX_COUNT_DIGITS:
        raise InvalidResponse(f"{INFERENCE_HEADER} {show(declared)} is not a byte count")
    length = int(text)
    if length > body_size:
        raise InvalidResponse(f"{INFERENCE_HEADER} {length:,} is beyond the {body_size:,}-byte body")
    return length


def outputs_of(document: dict[str, Any], binary: memoryview | None) -> Outputs:
    """The outputs of an answer's JSON (its header, for a binary answer: then `binary` is the
    bytes after it, which the outputs naming a `binary_data_size` take in order)."""
    raw_outputs = document.get("outputs")
    if not isinstance(raw_outputs, list) or not raw_outputs:
        raise InvalidResponse("response has no outputs")
    outputs: Outputs = {}
    offset = 0
    for index, raw in enumerate(raw_outputs):
        size = binary_data_size(index, raw)
        if size is None:
            output = parse_output(index, raw)
        elif binary is None:
            raise InvalidResponse(
                f"output {label(index, raw)} has binary_data_size but the answer has no "
                f"{INFERENCE_HEADER} header (no binary data)"
            )
        else:
            remaining = len(binary) - offset
            if size > remaining:
                raise InvalidResponse(
                    f"output {label(index, raw)}: binary_data_size {size:,} is more than the "
                    f"{remaining:,} bytes of binary data left"
                )
            output = binary_output(index, raw, bytes(binary[offset : offset + size]))
            offset += size
        outputs[output.name] = output
    if binary is not None and offset != len(binary):
        raise InvalidResponse(
            f"the outputs' binary_data_size add up to {offset:,} bytes, the answer carries {len(binary):,} "
            "after its JSON header"
        )
    return outputs


def binary_data_size(index: int, raw: Any) -> int | None:
    """`parameters.binary_data_size` of an output (None: its data is JSON)."""
    parameters = raw.get("parameters") if isinstance(raw, dict) else None
    if not isinstance(parameters, dict) or "binary_data_size" not in parameters:
        return None
    size = parameters["binary_data_size"]
    if type(size) is not int or size < 0:  # bool is an int subclass: excluded too
        raise InvalidResponse(
            f"output {label(index, raw)}: binary_data_size {show(size)} is not a byte count"
        )
    return size


def label(index: int, raw: Any) -> str:
    """An output's name as reasons print it: its own (checked) or its position."""
    name = raw.get("name", str(index)) if isinstance(raw, dict) else str(index)
    if not isinstance(name, str):
        raise InvalidResponse(f"output {index}: name {show(name)} is not a string")
    return output_name(name)


def binary_output(index: int, raw: dict[str, Any], contents: bytes) -> OutputTensor:
    """An output whose values are `contents`, the raw bytes of a tensor of its declared shape and
    datatype (both required: raw bytes say neither). Its JSON `data`, if any, is ignored, as
    Triton's own client does."""
    name = label(index, raw)
    where = f"output {name}"
    if raw.get("datatype") is None or raw.get("shape") is None:
        raise InvalidResponse(f"{where}: binary data needs a datatype and a shape, the answer lacks one")
    datatype = check_datatype(raw["datatype"], where)
    shape = declared_shape(raw["shape"], where)
    data = raw_values(datatype, shape, contents, where)
    return OutputTensor(name=name, data=data, shape=shape, datatype=datatype)


def parse_output(index: int, raw: Any) -> OutputTensor:
    """One entry of `outputs`: {"name", "shape", "datatype", "data"}; `shape` and `datatype` may
    be missing (the nesting of `data` then gives the shape), anything present must be right."""
    if not isinstance(raw, dict) or "data" not in raw:
        raise InvalidResponse(f"output {index} has no data")
    name = label(index, raw)
    where = f"output {name}"
    if not isinstance(raw["data"], list):
        raise InvalidResponse(f"{where}: data is a JSON {json_type(raw['data'])}, not an array")
    data, nested_shape = flatten(raw["data"])
    if nested_shape is None:
        raise InvalidResponse(f"{where}: data is ragged (nested arrays of different lengths)")
    datatype = check_datatype(raw["datatype"], where) if raw.get("datatype") is not None else None
    check_values(datatype, data, where)
    if raw.get("shape") is None:
        return OutputTensor(name=name, data=data, shape=nested_shape, datatype=datatype)
    shape = declared_shape(raw["shape"], where)
    check_count(shape, data, where)
    return OutputTensor(name=name, data=data, shape=shape, datatype=datatype)


def repository_models(body: bytes) -> list[str] | None:
    """Model names from POST /v2/repository/index ([{"name": ..., "state": ...}, ...], as Triton
    and MLServer answer); None when the body is not such a list."""
    try:
        index = loads_object(body)
    except InvalidResponse:
        return None
    if not isinstance(index, list):
        return None
    names = [e["name"] for e in index if isinstance(e, dict) and isinstance(e.get("name"), str)]
    return sorted(set(names)) if len(names) == len(index) else None


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
        if not isinstance(raw["name"], str):
            raise MetadataError(
                f"GET {url}: metadata input {index}: name {show(raw['name'])} is not a string"
            )
        datatype = raw.get("datatype", "FP32")
        datatype = datatype.upper() if isinstance(datatype, str) else show(datatype)
        if datatype not in DATATYPES:
            raise MetadataError(
                f"GET {url}: input {raw['name']} has unsupported datatype {cut(datatype, 40)}"
            )
        dims = raw["shape"]
        if len(dims) > MAX_RANK or not all(type(d) is int and -1 <= d < 2**63 for d in dims):
            raise MetadataError(
                f"GET {url}: input {raw['name']}: shape {show(dims)} is not a list of integers (-1 or more)"
            )
        has_batch = bool(dims) and dims[0] == -1
        batched = has_batch if batched is None else batched and has_batch
        if has_batch:
            dims = dims[1:]
        dims = [auto.dynamic_dim if d < 0 else d for d in dims] or [1]
        if any(d == 0 for d in dims):
            raise MetadataError(f"GET {url}: input {raw['name']} has a zero-sized dimension")
        try:
            specs[raw["name"]] = TensorInput(datatype=datatype, dims=dims, data="random")
        except ValueError as exc:  # pydantic's ValidationError, with every field it refused
            reason = " ".join(str(exc).split())[:160]
            raise MetadataError(f"GET {url}: input {raw['name']} cannot be generated: {reason}") from None
    if not batched:
        # Without a batch dimension there is one request shape, whatever the batch sizes say.
        return [Shape(name="auto", batch_size=0, inputs=specs, count=auto.count)]
    return [Shape(name=f"auto-bs{b}", batch_size=b, inputs=specs, count=auto.count) for b in auto.batch_sizes]
