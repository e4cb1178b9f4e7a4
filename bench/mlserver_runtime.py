"""A custom MLServer runtime serving an ONNX model with ONNX Runtime (the benchmarks' third-party
Open Inference Protocol server; MLServer ships no ONNX runtime on PyPI).

It is written the way such runtimes usually are: the session is created in `load`, and nothing
is run until the first request, so the first call of each batch size pays ONNX Runtime's
per-shape costs (memory planning, arena growth, kernel set-up) in front of a user.
Loaded by MLServer from the model directory (model-settings.json names
`mlserver_runtime.OnnxRuntimeModel`), inside MLServer's own venv; this repository never imports it.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri


class OnnxRuntimeModel(MLModel):
    async def load(self) -> bool:
        uri = await get_model_uri(self._settings)
        options = ort.SessionOptions()
        threads = (self._settings.parameters.extra or {}).get("threads") if self._settings.parameters else None
        if threads:
            options.intra_op_num_threads = int(threads)
        self._session = ort.InferenceSession(uri, options, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name
        self._output = self._session.get_outputs()[0].name
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        array = NumpyCodec.decode_input(payload.inputs[0]).astype(np.float32, copy=False)
        (result,) = self._session.run([self._output], {self._input: array})
        return InferenceResponse(
            model_name=self.name, outputs=[NumpyCodec.encode_output(self._output, result)]
        )
