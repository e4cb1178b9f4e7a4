"""The reference model server: one runtime interface over ONNX Runtime and PyTorch, served over the
Open Inference Protocol v2 REST.

Importing this package is cheap: numpy, onnxruntime and torch are imported by the modules that need them.
"""
