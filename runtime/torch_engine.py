"""The torch backend: eager execution of a model's `Stage` modules on CPU or CUDA.

    loader = StageLoader(create_model("shm_tiny"), "detail")
    with TorchEngine(loader, device="cpu", precision="fp32") as engine: ...

Options: device "cpu" or "cuda" (CUDA needs the `torch_cuda` probe), precision "fp32" or
"fp16" (inputs and outputs stay float32: the engine casts, like an ONNX graph converted with
keep_io_types), channels_last memory format. Stage modules of one model share weights (AIM's
semantic and detail stages share its encoder), so an engine that changes device, precision or
memory format works on its own copy of the stage module and never alters the model.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import numpy as np

from mattrt.availability import require
from mattrt.errors import InputError
from mattrt.runtime.engine import DEVICES, Engine, TensorMeta, check_choice

if TYPE_CHECKING:
    from mattrt.models.base import MattingModel, Stage

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
            from mattrt.models import create_model

            self._model = create_model(self._model, checkpoint=self._checkpoint)
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

    def __init__(self, loader: StageLoader, device: str = "cpu", precision: str = "fp32", channels_last: bool = False):
        check_choice(device, DEVICES, "device")
        if precision not in TORCH_PRECISIONS:
            hint = (
                "; int8 runs from an explicit Q/DQ ONNX graph: use the onnxruntime backend with an int8 export"
                if precision == "int8"
                else ""
            )
            raise InputError(f"the torch engine runs precision {', '.join(TORCH_PRECISIONS)}, not {precision!r}{hint}")
        if device == "cuda":
            require("torch_cuda", "the torch engine on device cuda")
        super().__init__(loader.stage_name, device, precision)
        self.loader = loader
        self.channels_last = bool(channels_last)
        self.fixed_spatial = False
        stage = loader()
        size = stage.spatial_size
        self.stage_spatial_size = size
        self.inputs = tuple(TensorMeta(t.name, (None, t.channels, size, size), np.dtype(np.float32)) for t in stage.inputs)
        self.outputs = tuple(TensorMeta(t.name, (None, t.channels, size, size), np.dtype(np.float32)) for t in stage.outputs)
        self._module = None

    def _activate(self) -> None:
        import torch

        module = self.loader().module
        needs_copy = self.device != "cpu" or self.precision != "fp32" or self.channels_last
        if needs_copy:
            module = copy.deepcopy(module)
            module = module.to(self.device)
            if self.precision == "fp16":
                module = module.half()
            if self.channels_last:
                module = module.to(memory_format=torch.channels_last)
        self._module = module.eval()

    def _deactivate(self) -> None:
        self._module = None
        if self.device == "cuda":
            import torch

            torch.cuda.empty_cache()

    def _infer(self, feeds: dict[str, np.ndarray], batch: int) -> dict[str, np.ndarray]:
        import torch

        dtype = torch.float16 if self.precision == "fp16" else torch.float32
        tensors = []
        for meta in self.inputs:
            t = torch.from_numpy(np.ascontiguousarray(feeds[meta.name])).to(self.device, dtype)
            if self.channels_last:
                t = t.contiguous(memory_format=torch.channels_last)
            tensors.append(t)
        with torch.inference_mode():
            result = self._module(*tensors)
        if isinstance(result, torch.Tensor):
            result = (result,)
        if len(result) != len(self.outputs):
            raise InputError(
                f"stage {self.name!r} returned {len(result)} outputs; its contract lists {len(self.outputs)}"
            )
        return {
            meta.name: value.detach().to("cpu", torch.float32).contiguous().numpy()
            for meta, value in zip(self.outputs, result)
        }


def model_engines(
    model: "MattingModel", device: str = "cpu", precision: str = "fp32", channels_last: bool = False
) -> dict[str, TorchEngine]:
    """A TorchEngine per stage of the model, in the order of settings.stages."""
    return {
        name: TorchEngine(StageLoader(model, name), device=device, precision=precision, channels_last=channels_last)
        for name in model.settings.stages
    }


__all__ = ["StageLoader", "TORCH_PRECISIONS", "TorchEngine", "model_engines"]
