"""The gRPC service's messages to and from the data plane: `ModelInferRequest` -> `InferRequest`
through the checks the REST decoder uses (protocol.py), results -> `ModelInferResponse` with
`raw_output_contents`, model metadata.

Inputs come either all in `raw_input_contents` (one entry per input, in order: what Triton's and
KServe's clients send) or each in its typed `contents` field. Answers are always raw, as Triton's.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from warmgate.grpcapi import open_inference_grpc_pb2 as pb
from warmgate.modelserver.runtime.base import ModelInfo
from warmgate.modelserver.validation import (
    InferRequest,
    ProtocolError,
    check_count,
    check_header,
    check_range,
    input_spec,
    raw_tensor,
    validated_request,
)
from warmgate.tensors import NUMPY_DTYPES, to_raw

# The typed contents field of each datatype and the numpy type of its wire values. FP16 has none:
# the protocol sends it only as raw contents.
_CONTENTS: Mapping[str, tuple[str, np.dtype]] = {
    "BOOL": ("bool_contents", np.dtype(np.bool_)),
    "INT8": ("int_contents", np.dtype(np.int32)),
    "INT16": ("int_contents", np.dtype(np.int32)),
    "INT32": ("int_contents", np.dtype(np.int32)),
    "INT64": ("int64_contents", np.dtype(np.int64)),
    "UINT8": ("uint_contents", np.dtype(np.uint32)),
    "UINT16": ("uint_contents", np.dtype(np.uint32)),
    "UINT32": ("uint_contents", np.dtype(np.uint32)),
    "UINT64": ("uint64_contents", np.dtype(np.uint64)),
    "FP32": ("fp32_contents", np.dtype(np.float32)),
    "FP64": ("fp64_contents", np.dtype(np.float64)),
    "BYTES": ("bytes_contents", np.dtype(object)),
}


def decode_infer_request(request: pb.ModelInferRequest, info: ModelInfo, max_batch_size: int) -> InferRequest:
    if not request.inputs:
        raise ProtocolError("inputs must be a non-empty list")
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise ProtocolError(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs: "
            "with raw contents every input needs one, in order"
        )
    specs = {t.name: t for t in info.inputs}
    inputs: list[tuple[str, np.ndarray]] = []
    for index, tensor in enumerate(request.inputs):
        spec = input_spec(tensor.name, specs)
        where = f"input {tensor.name!r}"
        shape = list(tensor.shape)
        datatype = check_header(where, shape, tensor.datatype, spec)
        if raw:
            if tensor.contents.ListFields():
                raise ProtocolError(f"{where}: both contents and raw_input_contents given; use one")
            inputs.append((tensor.name, raw_tensor(where, datatype, shape, raw[index])))
        else:
            inputs.append((tensor.name, _typed_tensor(where, tensor, datatype, shape)))
    outputs = tuple(o.name for o in request.outputs) or None
    return validated_request(request.id or None, inputs, info, max_batch_size, outputs=outputs)


def _typed_tensor(
    where: str, tensor: pb.ModelInferRequest.InferInputTensor, datatype: str, shape: list[int]
) -> np.ndarray:
    known = _CONTENTS.get(datatype)
    if known is None:
        raise ProtocolError(f"{where}: {datatype} has no typed contents field; send it in raw_input_contents")
    field, wire = known
    stray = [f.name for f, _ in tensor.contents.ListFields() if f.name != field]
    if stray:
        raise ProtocolError(f"{where}: {datatype} data belongs in contents.{field}, got contents.{stray[0]}")
    array = np.array(list(getattr(tensor.contents, field)), dtype=wire)
    check_range(where, array, datatype)
    return check_count(where, shape, array.astype(NUMPY_DTYPES[datatype], copy=False))


def encode_infer_response(
    info: ModelInfo, request: InferRequest, results: Mapping[str, np.ndarray]
) -> pb.ModelInferResponse:
    datatypes = {t.name: t.datatype for t in info.outputs}
    names = request.outputs if request.outputs is not None else tuple(datatypes)
    response = pb.ModelInferResponse(model_name=info.name, model_version=info.version, id=request.id or "")
    for name in names:
        datatype, array = datatypes[name], results[name]
        response.outputs.add(name=name, datatype=datatype, shape=list(array.shape))
        response.raw_output_contents.append(to_raw(datatype, array))
    return response


def model_metadata_response(info: ModelInfo) -> pb.ModelMetadataResponse:
    tensor = pb.ModelMetadataResponse.TensorMetadata
    return pb.ModelMetadataResponse(
        name=info.name,
        versions=[info.version],
        platform=info.platform,
        inputs=[tensor(name=t.name, datatype=t.datatype, shape=list(t.shape)) for t in info.inputs],
        outputs=[tensor(name=t.name, datatype=t.datatype, shape=list(t.shape)) for t in info.outputs],
        # As the REST metadata's parameters: what really runs.
        properties={"device": info.device, "providers": ",".join(info.providers)},
    )
