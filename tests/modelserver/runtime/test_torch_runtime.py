from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.modelserver import gpu
from warmgate.modelserver import demo
from warmgate.modelserver.runtime import RuntimeSpec, load, prepare
from warmgate.modelserver.runtime.base import ModelLoadError, TensorSpec
from warmgate.modelserver.runtime.torch_archive import torchscript_allowed
from warmgate.modelserver.runtime.torch_demo import build_module
from warmgate.modelserver.runtime.torch_runtime import TorchOptions


def spec(path: Path, **kwargs: Any) -> RuntimeSpec:
    kwargs.setdefault("threads", 1)
    return RuntimeSpec(kind="torch", model_path=path, model_name=path.stem, **kwargs)


@pytest.fixture(scope="module")
def demo_script(cache_dir: Path) -> Path:
    return demo.ensure_torchscript(cache_dir)


class Scale(torch.nn.Module):
    """Two inputs, one output; batch dimension first."""

    def forward(self, x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return x * k.to(x.dtype).unsqueeze(1)


def test_torchscript_demo_matches_the_module_and_the_onnx_graph(demo_script: Path, demo_onnx: Path) -> None:
    runtime = load(spec(demo_script, device="cpu"))
    info = runtime.info()
    assert info.inputs == (demo.INPUT,) and info.outputs == (demo.OUTPUT,)
    assert info.platform == "pytorch_torchscript" and info.device == "cpu" and info.batched
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    got = runtime.infer({"input": x})["logits"]
    with torch.inference_mode():
        want = build_module(demo.weights())(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)
    onnx_logits = load(RuntimeSpec(kind="onnx", model_path=demo_onnx, model_name="demo", device="cpu")).infer(
        {"input": x}
    )["logits"]
    np.testing.assert_allclose(got, onnx_logits, atol=1e-4)


def test_torch_export_program_carries_its_own_signature(tmp_path: Path) -> None:
    batch = torch.export.Dim("batch", min=1, max=64)
    example = (torch.ones(2, 3), torch.ones(2, dtype=torch.int64))
    program = torch.export.export(Scale(), example, dynamic_shapes={"x": {0: batch}, "k": {0: batch}})
    path = tmp_path / "scale.pt2"
    torch.export.save(program, str(path))
    runtime = load(spec(path, device="cpu"))
    info = runtime.info()
    assert info.platform == "pytorch_export"
    assert info.inputs == (TensorSpec("x", "FP32", (-1, 3)), TensorSpec("k", "INT64", (-1,)))
    assert info.outputs == (TensorSpec("output__0", "FP32", (-1, 3)),)
    x = np.arange(15, dtype=np.float32).reshape(5, 3)
    k = np.arange(5, dtype=np.int64)
    np.testing.assert_array_equal(runtime.infer({"x": x, "k": k})["output__0"], x * k[:, None])


def test_torchscript_without_a_signature_needs_one_from_the_command_line(tmp_path: Path) -> None:
    path = tmp_path / "scale.pt"
    with torchscript_allowed():
        torch.jit.save(torch.jit.trace(Scale(), (torch.ones(2, 3), torch.ones(2))), str(path))
    with pytest.raises(ModelLoadError, match="--input"):
        load(spec(path))
    signature = {
        "inputs": (TensorSpec("x", "FP32", (-1, 3)), TensorSpec("k", "FP32", (-1,))),
        "outputs": (TensorSpec("scaled", "FP32", (-1, 3)),),
    }
    runtime = load(spec(path, **signature))
    x = np.ones((2, 3), dtype=np.float32)
    out = runtime.infer({"x": x, "k": np.array([2.0, 3.0], dtype=np.float32)})
    np.testing.assert_array_equal(out["scaled"], [[2, 2, 2], [3, 3, 3]])


def test_bfloat16_runs_reduced_but_answers_in_the_promised_fp32(demo_script: Path) -> None:
    full = load(spec(demo_script, device="cpu"))
    reduced = load(spec(demo_script, device="cpu", options=TorchOptions(dtype="bfloat16")))
    x = np.random.default_rng(1).standard_normal((1, 3, 64, 64)).astype(np.float32)
    got = reduced.infer({"input": x})["logits"]
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, full.infer({"input": x})["logits"], atol=0.15, rtol=0.1)


def test_compiled_export_program_serves_new_batch_sizes(demo_script: Path, cache_dir: Path) -> None:
    # The eager backend exercises dynamo's tracing and the dynamic batch dim without a C++ build.
    options = TorchOptions(compile=True, compile_backend="eager")
    compiled = load(spec(demo.ensure_export(cache_dir), device="cpu", options=options))
    with pytest.raises(ModelLoadError, match=r"torch\.export"):
        load(spec(demo_script, options=options))
    plain = load(spec(demo_script, device="cpu"))
    for batch in (1, 3):
        x = np.random.default_rng(batch).standard_normal((batch, 3, 64, 64)).astype(np.float32)
        np.testing.assert_allclose(
            compiled.infer({"input": x})["logits"], plain.infer({"input": x})["logits"], atol=1e-5
        )


def test_cpu_model_is_loaded_before_fork_and_concurrent_calls_agree(demo_script: Path) -> None:
    prepared = prepare(spec(demo_script, device="cpu"))
    assert prepared is not None  # CPU TorchScript may be shared copy-on-write by forked workers
    runtime = load(spec(demo_script, device="cpu"), prepared)
    assert runtime is prepared
    x = np.random.default_rng(2).standard_normal((2, 3, 64, 64)).astype(np.float32)
    expected = runtime.infer({"input": x})["logits"]
    results: list[np.ndarray] = []
    threads = [
        threading.Thread(target=lambda: results.append(runtime.infer({"input": x})["logits"]))
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for result in results:
        np.testing.assert_allclose(result, expected, rtol=0, atol=1e-6)


def test_cuda_workers_load_after_fork(demo_script: Path) -> None:
    # Never touch CUDA in the parent: prepare declines, whatever this machine has.
    assert prepare(spec(demo_script, device="cuda")) is None


def test_corrupt_archive_is_a_one_line_load_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.pt"
    path.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ModelLoadError) as caught:
        load(spec(path))
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.gpu
def test_cuda_device_runs_and_matches_cpu(demo_script: Path) -> None:
    gpu.require_torch_cuda()
    runtime = load(spec(demo_script, device="cuda", require_gpu=True))
    assert runtime.info().device == "cuda:0"
    x = np.random.default_rng(3).standard_normal((4, 3, 64, 64)).astype(np.float32)
    cpu = load(spec(demo_script, device="cpu")).infer({"input": x})["logits"]
    np.testing.assert_allclose(runtime.infer({"input": x})["logits"], cpu, atol=1e-3, rtol=1e-3)
