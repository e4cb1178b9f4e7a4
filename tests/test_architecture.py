"""The shape of the package, checked rather than described: one import name, no import cycles, and
layers that only lean downwards (docs/architecture.md draws the same picture).

The import graph comes from grimp, which reads every import statement, function-level ones
included: a lazy import still makes a cycle for a reader of the code.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import zipfile
from pathlib import Path

import grimp
import pytest

REPO = Path(__file__).resolve().parents[1]

# From the top down. Modules in one layer never import each other: the three parts are
# independent programs that share only the contract beneath them. `sidecar` composes two of them
# (the engine and the probe), so it sits above all three.
LAYERS = (
    grimp.Layer("__main__", "cli", independent=False),
    grimp.Layer("sidecar"),
    grimp.Layer("entrypoint", "probe", "modelserver"),
    grimp.Layer("configfile"),
    grimp.Layer("protocols"),
    grimp.Layer("config", "state"),
    grimp.Layer(
        "tensors",
        "exitcodes",
        "errors",
        "redact",
        "files",
        "grpcapi",
        "placeholders",
        "artifacts",
        independent=False,
    ),
)


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph("warmgate", include_external_packages=False)


def import_cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return components


def test_cycle_finder_sees_a_cycle() -> None:
    toy = grimp.ImportGraph()
    for importer, imported in (("a.x", "a.y"), ("a.y", "a.z"), ("a.z", "a.x"), ("a.z", "a.w")):
        toy.add_import(importer=importer, imported=imported)
    assert import_cycles(toy) == [["a.x", "a.y", "a.z"]]


def test_no_import_cycles(graph: grimp.ImportGraph) -> None:
    assert import_cycles(graph) == []


def test_layers_only_lean_downwards(graph: grimp.ImportGraph) -> None:
    illegal = graph.find_illegal_dependencies_for_layers(layers=LAYERS, containers={"warmgate"})
    described = sorted(f"{dependency.importer} -> {dependency.imported}" for dependency in illegal)
    assert described == []


@pytest.mark.timeout(300)
def test_the_wheel_installs_one_import_name(tmp_path: Path) -> None:
    # Offline and fast with the venv's own setuptools; a venv without one builds in isolation.
    isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-q"]
    subprocess.run(
        [*build, "-w", str(tmp_path), str(REPO)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("warmgate-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    top_level = {name.split("/")[0] for name in names if ".dist-info/" not in name}
    assert top_level == {"warmgate"}
    metadata = next(name for name in names if name.endswith(".dist-info/top_level.txt"))
    with zipfile.ZipFile(wheel) as archive:
        assert archive.read(metadata).decode().split() == ["warmgate"]
