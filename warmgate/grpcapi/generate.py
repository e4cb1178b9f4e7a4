"""Regenerate the Open Inference Protocol stubs from the vendored .proto.

    python -m warmgate.grpcapi.generate          # rewrite the _pb2 modules beside the .proto
    python -m warmgate.grpcapi.generate --check  # exit 1 when they differ from a fresh generation

protoc runs from grpcio-tools (the `test` extra), with the repository root as the include path,
so the generated service module imports its messages as `warmgate.grpcapi....` rather than as a
top-level module.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
PROTO = PACKAGE_DIR / "open_inference_grpc.proto"
# The root the proto's import path is relative to: the directory holding `warmgate/`.
ROOT = PACKAGE_DIR.parent.parent
GENERATED = ("open_inference_grpc_pb2.py", "open_inference_grpc_pb2.pyi", "open_inference_grpc_pb2_grpc.py")


def generate(out_dir: Path) -> list[Path]:
    """Run protoc into `out_dir` (which mirrors the package path); return the generated files."""
    from grpc_tools import protoc

    arguments = [
        "protoc",
        f"--proto_path={ROOT}",
        f"--proto_path={Path(protoc.__file__).parent / '_proto'}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        str(PROTO.relative_to(ROOT)),
    ]
    if protoc.main(arguments) != 0:
        raise RuntimeError(f"protoc failed on {PROTO}")
    generated_dir = out_dir / PROTO.parent.relative_to(ROOT)
    return [generated_dir / name for name in GENERATED]


def stale_files() -> list[str]:
    """The generated files that differ from what protoc writes now (or are missing)."""
    with tempfile.TemporaryDirectory() as scratch:
        fresh = generate(Path(scratch))
        return [
            path.name
            for path in fresh
            if not (PACKAGE_DIR / path.name).is_file()
            or (PACKAGE_DIR / path.name).read_bytes() != path.read_bytes()
        ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m warmgate.grpcapi.generate", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--check", action="store_true", help="only report stale stubs (exit 1)")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files()
        if stale:
            print(
                f"stale gRPC stubs: {', '.join(stale)}; run python -m warmgate.grpcapi.generate",
                file=sys.stderr,
            )
            return 1
        print("gRPC stubs are up to date")
        return 0
    with tempfile.TemporaryDirectory() as scratch:
        for path in generate(Path(scratch)):
            (PACKAGE_DIR / path.name).write_bytes(path.read_bytes())
            print(f"wrote {PACKAGE_DIR / path.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
