"""Custom MLServer runtimes for the benchmarks' third-party Open Inference Protocol server
(MLServer publishes no ONNX or TorchScript runtime on PyPI):

- `TorchScriptModel`: a TorchScript module (`torch.jit.load`), the way custom PyTorch runtimes are
  usually written; TorchScript's profiling executor specialises and optimises the graph on the
  first calls of each new input shape, so the first request of each batch size is slow.
- `OnnxRuntimeModel`: an ONNX model in ONNX Runtime (CPU); its per-shape first-call cost is
  small (memory planning, arena growth).
- `LazyOnnxRuntimeModel`: the same, but its session opens on the first request, as lazily loading
  custom runtimes do (the "lazily loading third-party server" of docs/engine.md's causes examples).

The first two load in `load` and run nothing until the first request, as such runtimes usually do.
Loaded by MLServer from the model directory (model-settings.json names
`mlserver_runtime.<class>`), inside MLServer's own venv; this repository never imports it.
"""

from __future__ import annotations

import numpy as np
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri


class OnnxRuntimeModel(MLModel):
    async def load(self) -> bool:
        import onnxruntime as ort

        uri = await get_model_uri(self._settings)
        options = ort.SessionOptions()
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


class LazyOnnxRuntimeModel(OnnxRuntimeModel):
    async def load(self) -> bool:
        self._session = None
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        if self._session is None:
            await OnnxRuntimeModel.load(self)
        return await OnnxRuntimeModel.predict(self, payload)


class TorchScriptModel(MLModel):
    async def load(self) -> bool:
        import torch

        uri = await get_model_uri(self._settings)
        self._torch = torch
        self._module = torch.jit.load(uri, map_location="cpu").eval()
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        array = NumpyCodec.decode_input(payload.inputs[0]).astype(np.float32, copy=False)
        with self._torch.inference_mode():
            result = self._module(self._torch.from_numpy(array)).numpy()
        return InferenceResponse(model_name=self.name, outputs=[NumpyCodec.encode_output("logits", result)])
