"""mattrt.engines.tensorrt: everything TensorRT: the ONNX rewrites and lint it needs, plan builds, the engine."""
