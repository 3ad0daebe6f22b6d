"""The `Engine` interface: one network call with named, typed inputs and outputs.

Loaders are separate from runners, as in Polygraphy: a loader is a callable that builds the
heavy object (a torch module on a device, an onnxruntime session) when the runner is
activated, so constructing engines is cheap and nothing is loaded until it is used.

    with TorchEngine(StageLoader(model, "detail")) as engine:
        outputs = engine.run({"image": tiles, "guidance": guidance})

Feeds and outputs are NumPy arrays. Shapes list the batch dimension as None (dynamic);
every other dimension is the stage's fixed size. An engine whose backend can run other
spatial sizes (torch eager) says so with `fixed_spatial = False`; the pipeline uses that only
for its whole-image reference mode.

Asking for a backend, device or precision this machine lacks raises MissingDependencyError
or InputError naming what is missing: there is no silent fallback.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from mattrt.errors import InputError, MattrtError

BACKENDS = ("torch", "onnxruntime")
DEVICES = ("cpu", "cuda")
PRECISIONS = ("fp32", "fp16", "int8")


class EngineError(MattrtError):
    """An engine used out of order (run before activation) or failing at run time."""


@dataclass(frozen=True)
class TensorMeta:
    """Name, shape (None for the dynamic batch) and dtype of one engine input or output."""

    name: str
    shape: tuple[int | None, ...]
    dtype: np.dtype

    def describe(self) -> str:
        dims = " x ".join("batch" if d is None else str(d) for d in self.shape)
        return f"{self.name} [{dims}] {np.dtype(self.dtype).name}"


def check_choice(value: str, choices: Sequence[str], what: str) -> str:
    if value not in choices:
        raise InputError(f"unknown {what} {value!r}; choose one of: {', '.join(choices)}")
    return value


class Engine(abc.ABC):
    """Base of every runner. Subclasses implement `_activate`, `_deactivate` and `_infer`."""

    backend: str = ""

    def __init__(self, name: str, device: str, precision: str):
        self.name = name
        self.device = device
        self.precision = precision
        self.is_active = False
        self.inputs: tuple[TensorMeta, ...] = ()
        self.outputs: tuple[TensorMeta, ...] = ()
        # Largest batch one call accepts (None: unbounded).
        self.max_batch: int | None = None
        # False when the backend also runs spatial sizes other than the declared ones.
        self.fixed_spatial: bool = True

    # -- lifecycle --------------------------------------------------------------------------
    def activate(self) -> "Engine":
        if not self.is_active:
            self._activate()
            self.is_active = True
        return self

    def deactivate(self) -> None:
        if self.is_active:
            self._deactivate()
            self.is_active = False

    def __enter__(self) -> "Engine":
        return self.activate()

    def __exit__(self, *exc) -> None:
        self.deactivate()

    # -- metadata ---------------------------------------------------------------------------
    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    @property
    def spatial_size(self) -> int:
        """Height (= width) of the declared input shapes."""
        return int(self.inputs[0].shape[-1])

    def describe(self) -> str:
        ins = ", ".join(t.describe() for t in self.inputs)
        outs = ", ".join(t.describe() for t in self.outputs)
        return f"{self.backend}:{self.name} on {self.device} ({self.precision}): ({ins}) -> ({outs})"

    # -- running ----------------------------------------------------------------------------
    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one call: {input name: array} -> {output name: array} (all outputs)."""
        if not self.is_active:
            raise EngineError(f"engine {self.name!r} is not active; use it in a `with` block or call activate()")
        batch = self._check_feeds(feeds)
        outputs = self._infer({meta.name: feeds[meta.name] for meta in self.inputs}, batch)
        missing = [name for name in self.output_names if name not in outputs]
        if missing:
            raise EngineError(f"engine {self.name!r} returned no {', '.join(missing)}")
        return outputs

    def _check_feeds(self, feeds: Mapping[str, np.ndarray], host: bool = True) -> int:
        """The batch size of valid feeds; host=False accepts any array exporting DLPack (device memory)."""
        expected = set(self.input_names)
        given = set(feeds)
        if given != expected:
            parts = []
            if expected - given:
                parts.append(f"missing {', '.join(sorted(expected - given))}")
            if given - expected:
                parts.append(f"unexpected {', '.join(sorted(given - expected))}")
            raise InputError(
                f"engine {self.name!r}: {'; '.join(parts)}; its inputs are "
                + ", ".join(t.describe() for t in self.inputs)
            )
        batch = None
        for meta in self.inputs:
            array = feeds[meta.name]
            if host and not isinstance(array, np.ndarray):
                raise InputError(f"engine {self.name!r}: input {meta.name} must be a NumPy array, got {type(array).__name__}")
            if not host and not all(hasattr(array, a) for a in ("__dlpack__", "shape", "dtype", "ndim")):
                raise InputError(
                    f"engine {self.name!r}: input {meta.name} must be a CuPy or NumPy array (DLPack), "
                    f"got {type(array).__name__}"
                )
            if array.dtype != meta.dtype:
                raise InputError(f"engine {self.name!r}: input {meta.name} must be {np.dtype(meta.dtype).name}, got {array.dtype}")
            if array.ndim != len(meta.shape):
                raise InputError(
                    f"engine {self.name!r}: input {meta.name} must have shape {meta.describe()}, got {array.shape}"
                )
            for axis, (want, got) in enumerate(zip(meta.shape, array.shape)):
                if want is None:
                    continue
                spatial = axis >= 2
                if want != got and (self.fixed_spatial or not spatial):
                    raise InputError(
                        f"engine {self.name!r}: input {meta.name} must have shape {meta.describe()}, got {array.shape}"
                    )
            if batch is None:
                batch = array.shape[0]
            elif array.shape[0] != batch:
                raise InputError(f"engine {self.name!r}: inputs have different batch sizes")
            if not self.fixed_spatial and array.shape[2:] != feeds[self.inputs[0].name].shape[2:]:
                raise InputError(f"engine {self.name!r}: inputs must share one spatial size")
        if batch is None or batch < 1:
            raise InputError(f"engine {self.name!r}: the batch must hold at least one item")
        if self.max_batch is not None and batch > self.max_batch:
            raise InputError(
                f"engine {self.name!r}: batch {batch} exceeds its maximum {self.max_batch}; use a smaller batch"
            )
        return batch

    @abc.abstractmethod
    def _activate(self) -> None: ...

    @abc.abstractmethod
    def _deactivate(self) -> None: ...

    @abc.abstractmethod
    def _infer(self, feeds: dict[str, np.ndarray], batch: int) -> dict[str, np.ndarray]: ...


def run_in_chunks(engine: Engine, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """engine.run over a batch larger than the engine's maximum, in chunks, outputs joined."""
    total = next(iter(feeds.values())).shape[0]
    step = engine.max_batch or total
    if total <= step:
        return engine.run(feeds)
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, total, step):
        out = engine.run({k: v[start : start + step] for k, v in feeds.items()})
        for k, v in out.items():
            parts.setdefault(k, []).append(v)
    return {k: np.concatenate(v) for k, v in parts.items()}


__all__ = ["BACKENDS", "DEVICES", "PRECISIONS", "Engine", "EngineError", "TensorMeta", "check_choice", "run_in_chunks"]
