"""mattrt.engines.onnxruntime: an export's ONNX graphs run by onnxruntime."""
