from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto

from tests.modelserver import models
from warmgate.modelserver.runtime import RuntimeSpec, load
from warmgate.modelserver.runtime.base import ModelLoadError, TensorSpec, TextOptions


def text_spec(model: Path, tokenizer: Path, max_length: int = 128) -> RuntimeSpec:
    return RuntimeSpec(
        kind="onnx", model_path=model, model_name="counter", device="cpu",
        text=TextOptions(tokenizer, "text", max_length),
    )  # fmt: skip


def test_bytes_input_is_tokenised_in_the_server(tmp_path: Path) -> None:
    runtime = load(
        text_spec(models.token_counter(tmp_path / "c.onnx"), models.word_tokenizer(tmp_path / "t.json"))
    )
    info = runtime.info()
    assert info.inputs == (TensorSpec("text", "BYTES", (-1, 1)),)
    texts = np.array([[b"hello world"], [b"warm servers answer fast"], [b"hello stranger"]], dtype=object)
    out = runtime.infer({"text": texts})
    # Padded to the longest text; the mask counts real tokens (unknown words still count).
    np.testing.assert_array_equal(out["tokens"], [2, 4, 2])
    ids = {w: i + 2 for i, w in enumerate(models.WORDS)}
    np.testing.assert_array_equal(
        out["id_sum"],
        [
            ids["hello"] + ids["world"],
            ids["warm"] + ids["servers"] + ids["answer"] + ids["fast"],
            ids["hello"] + 1,
        ],
    )


def test_long_texts_are_truncated_to_max_length(tmp_path: Path) -> None:
    model = models.token_counter(tmp_path / "c.onnx")
    runtime = load(text_spec(model, models.word_tokenizer(tmp_path / "t.json"), max_length=3))
    out = runtime.infer({"text": np.array([[b"hello " * 10]], dtype=object)})
    np.testing.assert_array_equal(out["tokens"], [3])


def test_model_without_token_id_inputs_is_refused(tmp_path: Path) -> None:
    model = models.identity(tmp_path / "i.onnx", TensorProto.FLOAT, ["batch", 2])
    with pytest.raises(ModelLoadError, match="input_ids"):
        load(text_spec(model, models.word_tokenizer(tmp_path / "t.json")))
