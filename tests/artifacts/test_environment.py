"""The environment warmgate adds for the server it starts."""

from __future__ import annotations

from pathlib import Path

from warmgate.artifacts.environment import CACHE_ENV, child_environment, server_environment


def test_every_family_points_into_the_cache_dir() -> None:
    env = server_environment(Path("/cache"), {})
    assert env[CACHE_ENV] == "/cache"
    assert env["TORCHINDUCTOR_CACHE_DIR"] == "/cache/torchinductor"
    assert env["TORCHINDUCTOR_FX_GRAPH_CACHE"] == "1"
    assert env["TORCHINDUCTOR_AUTOGRAD_CACHE"] == "1"
    assert env["TRITON_CACHE_DIR"] == "/cache/triton"
    assert env["CUDA_CACHE_PATH"] == "/cache/cuda"
    assert env["VLLM_CACHE_ROOT"] == "/cache/vllm"
    assert env["ORT_TENSORRT_CACHE_PATH"] == "/cache/ort-tensorrt"
    # Weights are not warm artifacts: where models are downloaded stays the user's decision.
    assert not {"HF_HOME", "HF_HUB_CACHE", "TORCH_HOME"} & set(env)


def test_user_set_variables_are_never_overridden() -> None:
    user = {"TORCHINDUCTOR_CACHE_DIR": "/mine", "CUDA_CACHE_PATH": "", "PATH": "/bin"}
    env = server_environment(Path("/cache"), user)
    assert "TORCHINDUCTOR_CACHE_DIR" not in env and "CUDA_CACHE_PATH" not in env
    child = child_environment({**user, CACHE_ENV: "/cache"})
    assert child is not None
    assert child["TORCHINDUCTOR_CACHE_DIR"] == "/mine" and child["CUDA_CACHE_PATH"] == ""
    assert child["PATH"] == "/bin" and child["TRITON_CACHE_DIR"] == "/cache/triton"


def test_without_a_cache_dir_nothing_is_added() -> None:
    assert child_environment({"PATH": "/bin"}) is None
    assert child_environment({"PATH": "/bin", CACHE_ENV: ""}) is None


def test_a_relative_cache_dir_is_made_absolute() -> None:
    child = child_environment({CACHE_ENV: "rel/cache"})
    assert child is not None and Path(child["TRITON_CACHE_DIR"]).is_absolute()
