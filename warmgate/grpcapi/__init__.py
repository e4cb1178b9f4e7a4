"""The Open Inference Protocol's gRPC service (`inference.GRPCInferenceService`): the vendored
`.proto` and the stubs generated from it.

`open_inference_grpc.proto` is KServe's open-inference-protocol definition, unchanged:
https://github.com/kserve/open-inference-protocol, specification/protocol/open_inference_grpc.proto
at commit d49cc23f89d709d87b210ef9449e273ae243984e (2025-05-11), Apache License 2.0
(LICENSE.open-inference-protocol beside it). Triton's `grpc_service.proto` declares the same
package, service and messages (and more RPCs), so these stubs talk to Triton, KServe, MLServer and
TorchServe's KServe mode alike.

The `_pb2` modules are generated: never edit them, run `python -m warmgate.grpcapi.generate`
(needs grpcio-tools, in the `test` extra). tests/grpcapi/test_generated.py fails when they are stale.

A leaf: importing this package loads nothing; importing a stub loads protobuf (and grpc for the
service stubs), which the protocol adapter and the reference server do lazily.
"""
