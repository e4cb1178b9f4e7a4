"""TensorFlow Serving REST.

    POST /v1/models/{model}[/versions/{version}]:predict

A batched shape is sent in row form, {"instances": [...]}, one instance per batch element (named
objects when the model has several inputs); a shape without a batch dimension in column form,
{"inputs": {...}}. Answers carry "predictions" (row) or "outputs" (column); "error" is a failure.

Ready is GET /v1/models/{model} answering 200 *and* listing an AVAILABLE version: TF Serving
answers 200 while the model is still loading.

Answers declare no shapes or datatypes: outputs are the nesting of the JSON (depth-bounded, see
answers.py), and for a batched request every output must lead with the batch size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from warmgate.protocols.answers import (
    InvalidResponse,
    Outputs,
    json_outputs,
    loads_result,
)
from warmgate.protocols.base import (
    Adapter,
    PreparedRequest,
    dumps,
)
from warmgate.protocols.readiness import BodyCheck, Endpoint

if TYPE_CHECKING:
    # Annotations only: importing the registry must not load numpy (it runs before the server spawns).
    from warmgate.tensors import Tensor


class TfServingAdapter(Adapter):
    name = "tfserving"
    answers_lead_with_batch = True

    def default_readiness_endpoints(self) -> list[Endpoint]:
        url = f"{self.server.url}/v1/models/{quote(self.server.model, safe='')}"
        return [Endpoint(url, BodyCheck("model-available"))]

    def build(self, tensors: Sequence[Tensor], batch_size: int) -> PreparedRequest:
        path = f"/v1/models/{quote(self.server.model, safe='')}"
        if self.server.model_version:
            path += f"/versions/{quote(self.server.model_version, safe='')}"
        document: dict[str, Any]
        if batch_size > 0:
            columns = [t.nested() for t in tensors]
            if len(tensors) == 1:
                instances: list[Any] = columns[0]
            else:
                instances = [
                    {t.name: column[i] for t, column in zip(tensors, columns, strict=True)}
                    for i in range(batch_size)
                ]
            document = {"instances": instances}
        else:
            document = {"inputs": {t.name: t.nested() for t in tensors}}
        return PreparedRequest(
            "POST", f"{self.server.url}{path}:predict", dumps(document), batch_size=batch_size
        )

    def parse(self, body: bytes) -> Outputs:
        document = loads_result(body)
        for key in ("predictions", "outputs"):
            value = document.get(key)
            if value is None:
                continue
            if value in ([], {}):
                break
            if key == "predictions" and isinstance(value, list) and all(isinstance(v, dict) for v in value):
                # Row form with named outputs: regroup to one column per output name.
                names = list(value[0])
                return json_outputs({name: [row.get(name) for row in value] for name in names})
            return json_outputs(value, key if not isinstance(value, dict) else "")
        raise InvalidResponse("response has no predictions or outputs")
