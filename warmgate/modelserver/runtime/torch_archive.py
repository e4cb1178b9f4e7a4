"""What warmgate keeps inside a TorchScript or torch.export archive, shared by the torch runtime
(which reads it) and the torch demo (which writes it). A leaf: no torch import."""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Iterator, Sequence

from warmgate.modelserver.runtime.base import TensorSpec

# Extra file inside a TorchScript or torch.export archive holding the model's I/O signature as JSON:
# {"inputs": [{"name", "datatype", "shape"}], "outputs": [...]}; TorchScript keeps no names of its own.
SIGNATURE_FILE = "warmgate.json"


def signature_json(inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]) -> str:
    """The extra-file content that names a TorchScript model's inputs and outputs."""
    return json.dumps({"inputs": [t.as_json() for t in inputs], "outputs": [t.as_json() for t in outputs]})


@contextlib.contextmanager
def torchscript_allowed() -> Iterator[None]:
    """torch 2.10+ deprecates TorchScript in favour of torch.export with a warning on every call;
    deployed servers still load .pt TorchScript archives, which is why this runtime supports them."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r"`torch\.jit\.\w+` is deprecated", DeprecationWarning)
        yield
