"""The torch backend: eager execution of a model's `Stage` modules on CPU or CUDA.

    loader = StageLoader(create_model("shm_tiny"), "detail")
    with TorchEngine(loader, device="cpu", precision="fp32") as engine: ...

Options: device "cpu" or "cuda" (CUDA needs the `torch_cuda` probe), precision "fp32" or
"fp16" (inputs and outputs stay float32: the engine casts, like an ONNX graph converted with
keep_io_types), channels_last memory format, and kernels: run the stage with mattrt's custom
ops (torch.ops.mattrt.max_unpool2d / attention_pool2d / attention_unpool2d: the CuPy kernels
on CUDA, their eager torch implementations on CPU) in place of F.max_unpool2d and AlphaNet's
attention functions (engines/torch/kernel_routing.py says how, without touching model code). Kernels
are off unless asked for (no silent change of what runs); on CUDA they need the `cupy_device`
probe. The choice is part of describe(), and `kernel_calls` counts the routed calls.
Stage modules of one model share weights (AIM's semantic and detail stages share its encoder),
so an engine that changes device, precision, memory format or kernels works on its own copy of
the stage module and never alters the model.

Besides `run` (NumPy in and out), `run_device` takes arrays already in the engine's device
memory (CuPy arrays on CUDA, NumPy on CPU) without copying them and returns torch tensors there:
the pipeline's device path feeds tiles it prepared on the GPU and stitches the outputs there.

`BACKEND` is this module's entry in the backend registry (engines/backends.py).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import numpy as np

from mattrt.engines.torch import kernel_routing
from mattrt.errors import InputError
from mattrt.lazy import lazy_import
from mattrt.models import create_model
from mattrt.models.registry import INIT_SEED
from mattrt.runtime import threads as threads_module
from mattrt.runtime.artifacts import ModelSpec
from mattrt.runtime.engine import DEVICES, Backend, Engine, TensorMeta, check_choice, require_all

if TYPE_CHECKING:
    from mattrt.models.base import MattingModel, Stage

torch = lazy_import("torch", probe="torch")

TORCH_PRECISIONS = ("fp32", "fp16")


class StageLoader:
    """Loader: one named stage of a MattingModel (a model instance, or a registered name built
    with `create_model(name, checkpoint)` when first called)."""

    def __init__(self, model: "MattingModel | str", stage: str, checkpoint=None):
        self._model = model
        self._checkpoint = checkpoint
        self.stage_name = stage

    def model(self) -> "MattingModel":
        if isinstance(self._model, str):
            self._model = create_model(self._model, checkpoint=self._checkpoint, seed=INIT_SEED)
        return self._model

    def __call__(self) -> "Stage":
        model = self.model()
        stages = model.stages()
        if self.stage_name not in stages:
            raise InputError(
                f"model {model.settings.name!r} has no stage {self.stage_name!r}; it has: {', '.join(stages)}"
            )
        return stages[self.stage_name]


class TorchEngine(Engine):
    """Runner for a torch Stage (eager mode)."""

    backend = "torch"
    device_arrays = True

    def __init__(
        self,
        loader: StageLoader,
        device: str = "cpu",
        precision: str = "fp32",
        channels_last: bool = False,
        kernels: bool = False,
    ):
        check_choice(device, DEVICES, "device")
        if precision not in TORCH_PRECISIONS:
            hint = (
                "; int8 runs from an explicit Q/DQ ONNX graph: use the onnxruntime backend with an int8 export"
                if precision == "int8"
                else ""
            )
            raise InputError(f"the torch engine runs precision {', '.join(TORCH_PRECISIONS)}, not {precision!r}{hint}")
        if not isinstance(kernels, bool):
            raise InputError(f"kernels must be True or False, got {kernels!r}")
        if device == "cuda":
            needed = ["torch_cuda", "cupy_device"] if kernels else ["torch_cuda"]
            require_all(needed, "the torch engine on device cuda" + (" with mattrt kernels" if kernels else ""))
        super().__init__(loader.stage_name, device, precision)
        self.loader = loader
        self.channels_last = bool(channels_last)
        self.kernels = kernels
        self._routing = None
        self.fixed_spatial = False
        stage = loader()
        size = stage.spatial_size
        self.stage_spatial_size = size
        self.inputs = tuple(TensorMeta(t.name, (None, t.channels, size, size), np.dtype(np.float32)) for t in stage.inputs)
        self.outputs = tuple(TensorMeta(t.name, (None, t.channels, size, size), np.dtype(np.float32)) for t in stage.outputs)
        self._module = None

    def _activate(self) -> None:
        module = self.loader().module
        needs_copy = self.device != "cpu" or self.precision != "fp32" or self.channels_last or self.kernels
        if needs_copy:
            module = copy.deepcopy(module)
            module = module.to(self.device)
            if self.precision == "fp16":
                module = module.half()
            if self.channels_last:
                module = module.to(memory_format=torch.channels_last)
        if self.kernels:
            self._routing = kernel_routing.KernelRouting().attach(module)
        self._module = module.eval()

    def _deactivate(self) -> None:
        self._module = None
        if self.device == "cuda":
                torch.cuda.empty_cache()

    # -- reporting ----------------------------------------------------------------------------
    def describe(self) -> str:
        if not self.kernels:
            return f"{super().describe()} [mattrt kernels: off]"
        how = f": {self._routing.describe()}" if self._routing is not None else " (routing set up on activation)"
        return f"{super().describe()} [mattrt kernels: on{how}]"

    @property
    def kernel_calls(self) -> dict[str, int]:
        """Calls routed to mattrt's custom ops since activation, per op (empty with kernels off)."""
        return dict(self._routing.calls) if self._routing is not None else {}

    @property
    def kernel_fallbacks(self) -> dict[str, int]:
        """Calls the routing saw but left to PyTorch (shapes or dtypes the ops do not cover)."""
        return dict(self._routing.fallbacks) if self._routing is not None else {}

    # -- running ------------------------------------------------------------------------------
    def _forward(self, tensors: list) -> tuple:
        with torch.inference_mode():
            if self._routing is not None:
                with self._routing.mode():
                    result = self._module(*tensors)
            else:
                result = self._module(*tensors)
        if isinstance(result, torch.Tensor):
            result = (result,)
        if len(result) != len(self.outputs):
            raise InputError(
                f"stage {self.name!r} returned {len(result)} outputs; its contract lists {len(self.outputs)}"
            )
        return tuple(result)

    def _prepare(self, tensor):
        tensor = tensor.to(self.device, torch.float16 if self.precision == "fp16" else torch.float32)
        if self.channels_last:
            tensor = tensor.contiguous(memory_format=torch.channels_last)
        return tensor

    def _infer(self, feeds: dict[str, np.ndarray], batch: int) -> dict[str, np.ndarray]:
        tensors = [self._prepare(torch.from_numpy(np.ascontiguousarray(feeds[meta.name]))) for meta in self.inputs]
        result = self._forward(tensors)
        return {
            meta.name: value.detach().to("cpu", torch.float32).contiguous().numpy()
            for meta, value in zip(self.outputs, result)
        }

    def _infer_device(self, feeds: dict, batch: int) -> dict:
        """Feeds in this engine's memory (CuPy arrays for cuda, NumPy arrays for cpu), taken
        without a copy through DLPack; returns float32 contiguous torch tensors on the device
        (consumers take them without a copy, e.g. cupy.from_dlpack)."""
        tensors = []
        for meta in self.inputs:
            tensor = torch.from_dlpack(feeds[meta.name])
            if tensor.device.type != self.device:
                raise InputError(
                    f"engine {self.name!r}: input {meta.name} lives in {tensor.device} memory; this engine runs on "
                    f"{self.device} (use run() for host arrays)"
                )
            tensors.append(self._prepare(tensor))
        result = self._forward(tensors)
        return {meta.name: value.detach().to(torch.float32).contiguous() for meta, value in zip(self.outputs, result)}


def model_engines(
    model: "MattingModel",
    device: str = "cpu",
    precision: str = "fp32",
    channels_last: bool = False,
    kernels: bool = False,
) -> dict[str, TorchEngine]:
    """A TorchEngine per stage of the model, in the order of settings.stages."""
    return {
        name: TorchEngine(
            StageLoader(model, name), device=device, precision=precision, channels_last=channels_last, kernels=kernels
        )
        for name in model.settings.stages
    }


def load_model_engines(
    model: "MattingModel | str",
    checkpoint=None,
    device: str = "cpu",
    precision: str = "fp32",
    channels_last: bool = False,
    kernels: bool = False,
    threads: int | None = None,
) -> tuple[ModelSpec, dict[str, Engine]]:
    """Torch engines for every stage of a model (an instance, or a registered name); kernels:
    run them with mattrt's custom ops (TorchEngine); threads: torch's intra-op threads
    (runtime/threads.py; default: the cores this process may use)."""
    check_choice(device, DEVICES, "device")
    threads_module.configure_torch(threads)
    if isinstance(model, str):
        model = create_model(model, checkpoint=checkpoint, seed=INIT_SEED)
    elif checkpoint is not None:
        model.load_weights(checkpoint)
    engines = model_engines(model, device=device, precision=precision, channels_last=channels_last, kernels=kernels)
    return ModelSpec.from_settings(model.settings, model.checkpoint_sha256), dict(engines)


def _identity(device: str) -> dict:
    identity = {"torch": torch.__version__}
    if device == "cuda":
        identity["gpu"] = torch.cuda.get_device_name(0)
        identity["compute_capability"] = "%d.%d" % torch.cuda.get_device_capability(0)
    return identity


BACKEND = Backend(
    name="torch",
    summary="PyTorch eager on the model's own stage modules (fp16, channels_last, mattrt kernels on cuda)",
    probes=("torch",),
    devices=DEVICES,
    device_probes={"cuda": ("torch_cuda",)},
    precisions=TORCH_PRECISIONS,
    artifacts="model",
    opener=lambda model, **options: load_model_engines(model, **options),
    options=("checkpoint", "channels_last", "kernels", "threads"),
    device_arrays=True,
    identity=_identity,
)


__all__ = ["BACKEND", "StageLoader", "TORCH_PRECISIONS", "TorchEngine", "load_model_engines", "model_engines"]
