"""TorchServe's native inference API.

    POST /predictions/{model}[/{version}]

TorchServe hands the request body to the model's handler: text handlers read a plain string,
custom handlers usually JSON. A shape with one BYTES input of one element is sent as that text
(text/plain); anything else as a JSON object mapping each input name to its nested list. The
server batches requests itself (batch_size in the model's registration), so the shape's batch
dimension is part of the data the handler sees. Health is the inference API's GET /ping.

A body that is not JSON (or not UTF-8) is the handler's own format and is compared as one opaque
value; a body that is JSON but nested too deep is malformed (answers.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING
from urllib.parse import quote

from warmgate.protocols.answers import (
    InvalidResponse,
    NotJson,
    Outputs,
    OutputTensor,
    json_outputs,
    loads_object,
)
from warmgate.protocols.base import (
    Adapter,
    PreparedRequest,
    dumps,
)
from warmgate.protocols.readiness import Endpoint

if TYPE_CHECKING:
    # Annotations only: importing the registry must not load numpy (it runs before the server spawns).
    from warmgate.tensors import Tensor

TEXT_HEADERS = {"Content-Type": "text/plain; charset=utf-8"}


class TorchServeAdapter(Adapter):
    name = "torchserve"

    def default_readiness_endpoints(self) -> list[Endpoint]:
        return [Endpoint(self.server.url + "/ping")]

    def build(self, tensors: Sequence[Tensor], batch_size: int) -> PreparedRequest:
        path = f"/predictions/{quote(self.server.model, safe='')}"
        if self.server.model_version:
            path += f"/{quote(self.server.model_version, safe='')}"
        url = self.server.url + path
        if len(tensors) == 1 and tensors[0].datatype == "BYTES" and math.prod(tensors[0].shape) == 1:
            return PreparedRequest("POST", url, tensors[0].flat()[0].encode(), TEXT_HEADERS)
        return PreparedRequest("POST", url, dumps({t.name: t.nested() for t in tensors}))

    def parse(self, body: bytes) -> Outputs:
        if not body.strip():
            raise InvalidResponse("response has no outputs (empty body)")
        try:
            document = loads_object(body)
        except NotJson:
            # Handlers may answer with plain text or bytes: compare those as one opaque output.
            return {"body": OutputTensor(name="body", data=[body], shape=(1,), datatype="BYTES")}
        if document in ([], {}, None, ""):
            raise InvalidResponse("response has no outputs")
        return json_outputs(document)
