"""The committed gRPC stubs are what protoc generates from the vendored .proto now."""

from __future__ import annotations

import pytest

from warmgate.grpcapi import generate


@pytest.mark.timeout(60)
def test_committed_stubs_match_a_fresh_generation() -> None:
    stale = generate.stale_files()
    assert not stale, f"stale gRPC stubs {stale}: run python -m warmgate.grpcapi.generate"


@pytest.mark.timeout(60)
def test_a_changed_proto_is_caught(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The check must be able to fail: a proto with one more field generates different stubs.
    proto = tmp_path / "warmgate" / "grpcapi" / generate.PROTO.name
    proto.parent.mkdir(parents=True)
    changed = generate.PROTO.read_text().replace("bool live = 1;", "bool live = 1;\n  bool extra = 2;")
    proto.write_text(changed)
    monkeypatch.setattr(generate, "ROOT", tmp_path)
    monkeypatch.setattr(generate, "PROTO", proto)
    # The message modules change; the service module, which only names the messages, does not.
    assert set(generate.stale_files()) == {"open_inference_grpc_pb2.py", "open_inference_grpc_pb2.pyi"}
