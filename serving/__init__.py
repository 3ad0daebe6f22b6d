"""mattrt.serving: Triton Inference Server deployment.

repository.py     `mattrt triton-repo`: model repositories (CPU: Python stage models on
                  onnxruntime; GPU: tensorrt_plan) plus a BLS pipeline model, from an export
triton_models.py  the classes the generated model.py shims delegate to (run inside Triton)
server.py         `mattrt serve`: start, watch and stop tritonserver (loopback, model control
                  off, restricted APIs behind a key)
cli.py            the two commands

The client and the `triton` backend entry live in mattrt.engines.triton.client (the registry is
in the runtime layer, below this command layer).
"""
