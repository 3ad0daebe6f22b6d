"""mattrt.export: a registered model (torch) -> one ONNX graph per stage and the manifest, with
parity checks against PyTorch. The rewrites and the lint TensorRT needs are mattrt.engines.tensorrt's."""
