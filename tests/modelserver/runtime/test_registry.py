"""The runtime registry: every `*_runtime.py` module declares itself, and the CLI, suffix detection
and loading all read the declarations."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from tests.modelserver.procs import REPO
from warmgate.modelserver import cli
from warmgate.modelserver.runtime import ModelLoadError, RuntimeSpec, load
from warmgate.modelserver.runtime.registry import runtime_for_suffix, runtime_type, runtime_types

HEAVY = ("numpy", "torch", "onnxruntime", "onnx")


def serve_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    cli.add_parsers(parser.add_subparsers())
    (serve,) = (
        action.choices["serve"]
        for action in parser._actions
        if isinstance(action, argparse._SubParsersAction)
    )
    assert isinstance(serve, argparse.ArgumentParser)
    return serve


def test_each_runtime_module_declares_itself() -> None:
    types = runtime_types()
    assert list(types) == ["onnx", "torch"]
    assert {
        suffix: runtime_for_suffix(suffix) for suffix in (".onnx", ".ort", ".pt", ".pth", ".ts", ".pt2")
    } == {
        ".onnx": "onnx",
        ".ort": "onnx",
        ".pt": "torch",
        ".pth": "torch",
        ".ts": "torch",
        ".pt2": "torch",
    }
    assert runtime_for_suffix(".bin") is None
    for name, declared in types.items():
        assert declared.name == name and declared.suffixes and "pip install" in declared.needs
    with pytest.raises(KeyError, match="unknown runtime 'tflite'; known: onnx, torch"):
        runtime_type("tflite")


def test_discovering_the_runtimes_imports_no_framework() -> None:
    # The CLI reads every declaration to build its parser in PID 1 of `warmgate run`.
    code = (
        "import sys; from warmgate.modelserver.runtime.registry import runtime_types; runtime_types(); "
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_the_cli_offers_what_the_registry_declares() -> None:
    serve = serve_parser()
    (runtime_flag,) = (a for a in serve._actions if a.dest == "runtime")
    assert list(runtime_flag.choices or ()) == list(runtime_types())
    groups = {group.title for group in serve._action_groups}
    assert {declared.title for declared in runtime_types().values()} <= groups
    args = serve.parse_args(["--demo", "--providers", "cpu", "--dtype", "bfloat16", "--compile"])
    onnx_options = runtime_type("onnx").options_from_args(args, Path("/cache"))
    torch_options = runtime_type("torch").options_from_args(args, Path("/cache"))
    assert onnx_options.providers == ("cpu",)
    assert onnx_options.optimized_cache_dir == Path("/cache")
    assert (torch_options.dtype, torch_options.compile) == ("bfloat16", True)


def test_a_runtime_rejects_its_own_bad_flags_with_one_line() -> None:
    args = serve_parser().parse_args(["--demo", "--providers", "cuda,tpu"])
    with pytest.raises(ValueError, match=r"^--providers: unknown provider 'tpu'; use tensorrt,cuda,cpu$"):
        runtime_type("onnx").options_from_args(args, Path("/cache"))


def test_loading_an_unknown_runtime_is_a_model_load_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="unknown runtime 'tflite'"):
        load(RuntimeSpec(kind="tflite", model_path=tmp_path / "m.tflite", model_name="m"))


def test_options_of_another_runtime_are_refused(tmp_path: Path) -> None:
    from warmgate.modelserver.runtime.onnx_runtime import OnnxOptions
    from warmgate.modelserver.runtime.torch_runtime import TorchOptions

    spec = RuntimeSpec(kind="onnx", model_path=tmp_path / "m.onnx", model_name="m", options=TorchOptions())
    with pytest.raises(TypeError, match="options must be OnnxOptions"):
        spec.options_as(OnnxOptions)
    assert (
        RuntimeSpec(kind="onnx", model_path=tmp_path, model_name="m").options_as(OnnxOptions) == OnnxOptions()
    )
