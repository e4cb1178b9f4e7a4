"""Text models: one BYTES input tokenised in the server, so tokenizer warmup is real.

Wraps a runtime whose inputs are token ids (`input_ids`, optionally `attention_mask` and
`token_type_ids`, as Hugging Face exports name them) and presents a single BYTES input instead.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from warmgate.modelserver.runtime.base import ModelInfo, ModelLoadError, Runtime, TensorSpec, TextOptions
from warmgate.tensors import NUMPY_DTYPES

IDS = "input_ids"
MASK = "attention_mask"
TYPE_IDS = "token_type_ids"
KNOWN_INPUTS = (IDS, MASK, TYPE_IDS)


class TextRuntime(Runtime):
    def __init__(self, inner: Runtime, options: TextOptions) -> None:
        from tokenizers import Tokenizer

        inner_info = inner.info()
        self._inner = inner
        self._specs = {t.name: t for t in inner_info.inputs}
        if IDS not in self._specs or set(self._specs) - set(KNOWN_INPUTS):
            raise ModelLoadError(
                f"a text model needs token-id inputs named {', '.join(KNOWN_INPUTS)} (input_ids required), "
                f"this one has {', '.join(self._specs)}"
            )
        try:
            tokenizer = Tokenizer.from_file(str(options.tokenizer_path))
        except Exception as exc:  # tokenizers raises its own Exception subclass
            raise ModelLoadError(f"{options.tokenizer_path}: cannot load tokenizer: {exc}") from None
        # Configured once here and never mutated again: encode_batch is then safe from many threads.
        tokenizer.enable_truncation(max_length=options.max_length)
        # Pad to the longest text of each batch, not to a fixed length a tokenizer.json may carry:
        # attention cost grows with the padded length.
        padding = tokenizer.padding or {}
        tokenizer.enable_padding(
            pad_id=padding.get("pad_id", 0),
            pad_type_id=padding.get("pad_type_id", 0),
            pad_token=padding.get("pad_token", "[PAD]"),
        )
        self._tokenizer = tokenizer
        self._input_name = options.input_name
        # [batch, 1] like Triton's string inputs, so a warmup shape's dims are [1] after the batch.
        text_shape = (-1, 1) if inner_info.batched else (1,)
        self._info = ModelInfo(
            name=inner_info.name,
            version=inner_info.version,
            platform=inner_info.platform,
            inputs=(TensorSpec(options.input_name, "BYTES", text_shape),),
            outputs=inner_info.outputs,
            device=inner_info.device,
            providers=inner_info.providers,
            batched=inner_info.batched,
        )

    def info(self) -> ModelInfo:
        return self._info

    @property
    def concurrency(self) -> int:
        return self._inner.concurrency

    def infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        texts = [_text(v) for v in inputs[self._input_name].reshape(-1)]
        encodings = self._tokenizer.encode_batch(texts)
        columns = {
            IDS: [e.ids for e in encodings],
            MASK: [e.attention_mask for e in encodings],
            TYPE_IDS: [e.type_ids for e in encodings],
        }
        feeds = {
            name: np.asarray(columns[name], dtype=NUMPY_DTYPES[spec.datatype])
            for name, spec in self._specs.items()
        }
        if not self._info.batched:
            feeds = {name: array[0] for name, array in feeds.items()}
        return self._inner.infer(feeds)

    def warmed(self) -> None:
        self._inner.warmed()

    def close(self) -> None:
        self._inner.close()


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)
