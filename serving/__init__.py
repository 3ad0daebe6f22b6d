"""mattrt.serving: Triton Inference Server deployment.

repository.py      `mattrt triton-repo`: model repositories (CPU: Python stage models on
                   onnxruntime; GPU: tensorrt_plan) plus a BLS pipeline model, from an export
triton_models.py   the classes the generated model.py shims delegate to (run inside Triton)
server.py          one tritonserver: start, stop with a drain (loopback, model control off,
                   restricted APIs behind a key, private shared memory)
supervisor.py      `mattrt serve`'s watch: restarts on a crash, a dead or hung stub, or shared
                   memory over its budget, with bounded back-off
status.py          `mattrt serve`'s own /ready, /live, /status, /metrics
processes.py       ports, process trees, stub processes, shared-memory regions, exit statuses
keys.py            the API key: sources, a generated private file, warnings
gpu_repository.py  what TensorRT repositories need from the server

The commands are in mattrt.commands.serving; the client and the `triton` backend entry live in
mattrt.engines.triton.client (the registry is in the runtime layer, below this one).
"""
