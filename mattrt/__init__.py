"""mattrt: a deployment runtime for automatic image matting.

Importing mattrt is cheap and never needs a GPU: heavy dependencies (torch, onnxruntime,
CuPy, TensorRT) are imported by the subpackages that use them.
"""

__version__ = "0.1.0"
