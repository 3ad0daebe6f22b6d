"""mattrt.engines.openvino: an export's ONNX graphs compiled by OpenVINO for the CPU."""
