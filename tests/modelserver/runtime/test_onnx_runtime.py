from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto

from tests.modelserver import gpu, models
from warmgate.modelserver.runtime import RuntimeSpec, load, prepare
from warmgate.modelserver.runtime.base import ModelLoadError, TensorSpec
from warmgate.modelserver.runtime.onnx_runtime import OnnxOptions, _cache_path
from warmgate.modelserver.warmup import warm_up


def spec(path: Path, **kwargs: Any) -> RuntimeSpec:
    kwargs.setdefault("threads", 1)
    return RuntimeSpec(kind="onnx", model_path=path, model_name=path.stem, **kwargs)


def direct(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def test_describes_the_model_and_matches_onnxruntime_called_directly(tmp_path: Path) -> None:
    path = models.mixed(tmp_path / "mixed.onnx")
    runtime = load(spec(path, device="cpu"))
    info = runtime.info()
    assert info.inputs == (TensorSpec("a", "FP32", (-1, 4)), TensorSpec("n", "INT64", (-1, 4)))
    assert info.outputs == (TensorSpec("total", "FP32", (-1, 4)), TensorSpec("flag", "BOOL", (-1,)))
    assert info.batched and info.platform == "onnxruntime_onnx"
    # What really runs, read back from the session.
    assert info.providers == ("CPUExecutionProvider",) and info.device == "cpu"
    rng = np.random.default_rng(1)
    feeds = {"a": rng.standard_normal((3, 4)).astype(np.float32), "n": rng.integers(-5, 5, (3, 4))}
    got = runtime.infer(feeds)
    want = direct(path, feeds)
    np.testing.assert_array_equal(got["total"], want[0])
    np.testing.assert_array_equal(got["flag"], want[1])


def test_demo_model_gives_the_same_logits_as_a_direct_session(demo_onnx: Path) -> None:
    runtime = load(spec(demo_onnx, device="cpu", threads=2))
    x = np.random.default_rng(2).standard_normal((2, 3, 64, 64)).astype(np.float32)
    np.testing.assert_allclose(
        runtime.infer({"input": x})["logits"], direct(demo_onnx, {"input": x})[0], atol=1e-5
    )


def test_optimized_model_cache_is_written_once_then_loaded(tmp_path: Path, demo_onnx: Path) -> None:
    cached = spec(demo_onnx, device="cpu", options=OnnxOptions(optimized_cache_dir=tmp_path))
    assert prepare(cached) is None  # the session made before fork is dropped again
    files = list((tmp_path / "artifacts" / "ort-optimized").glob("*/payload/model.onnx"))
    assert len(files) == 1 and files[0].stat().st_size > 0
    mtime = files[0].stat().st_mtime_ns
    x = np.random.default_rng(3).standard_normal((1, 3, 64, 64)).astype(np.float32)
    from_cache = load(cached).infer({"input": x})["logits"]
    assert files[0].stat().st_mtime_ns == mtime  # reused, not rewritten
    uncached = load(spec(demo_onnx, device="cpu")).infer({"input": x})["logits"]
    np.testing.assert_allclose(from_cache, uncached, atol=1e-5)


def test_cache_key_covers_ort_version_providers_and_level(
    tmp_path: Path, demo_onnx: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = spec(demo_onnx, options=OnnxOptions(optimized_cache_dir=tmp_path))
    first = _cache_path(base, ("CPUExecutionProvider",))
    assert first == _cache_path(base, ("CPUExecutionProvider",))
    assert first != _cache_path(base, ("CUDAExecutionProvider", "CPUExecutionProvider"))
    basic = spec(demo_onnx, options=OnnxOptions(optimized_cache_dir=tmp_path, graph_optimization="basic"))
    assert first != _cache_path(basic, ("CPUExecutionProvider",))
    # TensorRT compiles engines that ORT cannot serialise: no model cache for it.
    assert _cache_path(base, ("TensorrtExecutionProvider", "CPUExecutionProvider")) is None
    monkeypatch.setattr(ort, "__version__", "0.0.0-other")
    assert first != _cache_path(base, ("CPUExecutionProvider",))


def test_string_and_fp16_tensors_round_trip(tmp_path: Path) -> None:
    strings = load(spec(models.identity(tmp_path / "s.onnx", TensorProto.STRING, ["batch"])))
    assert strings.info().inputs[0].datatype == "BYTES"
    out = strings.infer({"x": np.array([b"caf\xc3\xa9", b""], dtype=object)})["y"]
    assert list(out) == ["café", ""]
    halves = load(spec(models.identity(tmp_path / "h.onnx", TensorProto.FLOAT16, ["batch", 2])))
    x = np.array([[1.5, -2.25]], dtype=np.float16)
    np.testing.assert_array_equal(halves.infer({"x": x})["y"], x)


def test_warm_up_runs_every_batch_size(demo_onnx: Path) -> None:
    runtime = load(spec(demo_onnx, device="cpu"))
    results = warm_up(runtime, [1, 2], count=2)
    assert [(r.batch_size, r.calls) for r in results] == [(1, 2), (2, 2)]
    assert all(r.first_s > 0 and r.steady_s > 0 for r in results)


def test_concurrent_identical_requests_give_identical_outputs(demo_onnx: Path) -> None:
    runtime = load(spec(demo_onnx, device="cpu", threads=1))
    x = np.random.default_rng(4).standard_normal((2, 3, 64, 64)).astype(np.float32)
    expected = runtime.infer({"input": x})["logits"]
    results: list[np.ndarray] = []

    def call() -> None:
        for _ in range(3):
            results.append(runtime.infer({"input": x})["logits"])

    threads = [threading.Thread(target=call) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 12
    for result in results:
        np.testing.assert_array_equal(result, expected)


def test_corrupt_model_is_a_one_line_load_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.onnx"
    path.write_bytes(b"not a protobuf at all")
    with pytest.raises(ModelLoadError) as caught:
        load(spec(path, device="cpu"))
    message = str(caught.value)
    assert str(path) in message and "\n" not in message


def test_without_a_gpu_asking_for_cuda_reports_the_cpu_fallback(demo_onnx: Path) -> None:
    if gpu.cuda_skip_reason() is None:
        pytest.skip("a GPU is present: the fallback cannot be observed")
    with pytest.raises(ModelLoadError, match=r"(fell back to CPU|no GPU|lacks CUDAExecutionProvider)"):
        load(spec(demo_onnx, device="cuda", require_gpu=True))


@pytest.mark.gpu
def test_cuda_provider_really_runs_and_matches_cpu(demo_onnx: Path) -> None:
    gpu.require_ort_cuda()
    runtime = load(spec(demo_onnx, device="cuda:0", require_gpu=True))
    info = runtime.info()
    assert info.providers[0] in ("TensorrtExecutionProvider", "CUDAExecutionProvider")
    assert info.device == "cuda:0"
    x = np.random.default_rng(5).standard_normal((4, 3, 64, 64)).astype(np.float32)
    cpu = load(spec(demo_onnx, device="cpu")).infer({"input": x})["logits"]
    np.testing.assert_allclose(runtime.infer({"input": x})["logits"], cpu, atol=1e-3, rtol=1e-3)
