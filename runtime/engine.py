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

An engine whose `device_arrays` is True also has `run_device`: feeds already in the engine's
device memory (any DLPack array: CuPy on cuda, NumPy on cpu) go in without a copy and the
outputs stay there, so the pipeline's device path (runtime/pixel_ops.py) stitches and fuses
them on the GPU.

`Backend` describes one backend for the registry (engines/backends.py): its name, the
availability probes it needs, devices, precisions, the artifacts it runs and how it opens stage
engines. Asking for a backend, device or precision this machine lacks raises
MissingDependencyError or InputError naming what is missing: there is no silent fallback.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np

from mattrt.availability import Probe, probe
from mattrt.errors import InputError, MattrtError, MissingDependencyError
from mattrt.manifest import PRECISIONS, TensorMeta, graph_interface

if TYPE_CHECKING:
    from mattrt.runtime.artifacts import ModelSpec

DEVICES = ("cpu", "cuda")
# What a backend runs (Backend.artifacts): a model in this process, the ONNX graphs of an export
# directory, TensorRT plans built from those graphs, or a remote server.
ARTIFACT_KINDS = ("model", "onnx", "plans", "url")


class EngineError(MattrtError):
    """An engine used out of order (run before activation) or failing at run time."""


def check_choice(value: str, choices: Sequence[str], what: str) -> str:
    if value not in choices:
        raise InputError(f"unknown {what} {value!r}; choose one of: {', '.join(choices)}")
    return value


def require_all(names: Sequence[str], purpose: str) -> None:
    """MissingDependencyError naming every missing probe of `names` (all at once, not the first)."""
    missing = [probe(name) for name in names if not probe(name).found]
    if missing:
        details = "; ".join(f"{p.name}: {p.detail}" for p in missing)
        raise MissingDependencyError(
            f"{purpose} needs {', '.join(p.name for p in missing)}, which {'is' if len(missing) == 1 else 'are'} "
            f"missing here ({details})"
        )


@dataclass(frozen=True)
class Backend:
    """One entry of the backend registry (engines/backends.py).

    `open(source, device=..., precision=..., **options)` returns (ModelSpec, {stage: Engine});
    `source` is what `artifacts` says: a registered model name or MattingModel ("model"), an
    export directory ("onnx"; "plans": the directory the backend's `prepare` step filled), or a
    server URL ("url"). `options` lists the keyword options `open` accepts beyond device and
    precision. `prepare(export_dir, out_dir, device=..., precision=..., **options) -> dict` is
    the build step an artifact cache runs once (None: the export is run as it is): it writes into
    out_dir everything `open(out_dir, ...)` needs (a copy of the manifest included) and returns
    metadata to record. `identity(device)` is what makes a prepared artifact valid only here
    (library version; GPU name and compute capability), part of the cache key.
    `refusal(device, precision)` says why this machine cannot run a precision the backend lists
    (None: it can), e.g. bf16 on a CPU without native bf16; it is asked after the probes.
    """

    name: str
    summary: str
    probes: tuple[str, ...]  # needed on every device
    devices: tuple[str, ...]
    precisions: tuple[str, ...]
    artifacts: str
    opener: Callable[..., tuple["ModelSpec", dict[str, "Engine"]]]
    options: tuple[str, ...] = ()
    device_probes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # extra probes per device
    device_arrays: bool = False  # its engines on cuda take and return device arrays (Engine.run_device)
    prepare: Callable[..., dict] | None = None
    identity: Callable[[str], dict[str, Any]] = lambda device: {}
    refusal: Callable[[str, str], str | None] = lambda device, precision: None
    # Backends whose server runs the whole pipeline (artifacts "url"): pipeline_opener(source,
    # **options) returns an object with run(rgb) -> MattingResult, describe(), spec, and a context
    # manager; `opener` then explains that stage engines are not available in this process.
    pipeline_opener: Callable[..., Any] | None = None

    def __post_init__(self) -> None:
        if self.artifacts not in ARTIFACT_KINDS:
            raise ValueError(f"backend {self.name}: artifacts must be one of {ARTIFACT_KINDS}, got {self.artifacts!r}")
        unknown = [d for d in self.devices if d not in DEVICES]
        if unknown:
            raise ValueError(f"backend {self.name}: unknown devices {unknown}")

    def needed_probes(self, device: str) -> tuple[str, ...]:
        return tuple(self.probes) + tuple(self.device_probes.get(device, ()))

    def missing(self, device: str) -> list[Probe]:
        """The probes this backend needs on `device` that are not found here."""
        return [probe(name) for name in self.needed_probes(device) if not probe(name).found]

    def check(self, device: str, precision: str) -> None:
        """InputError for a device or precision the backend does not run; MissingDependencyError
        naming every missing probe."""
        if device not in self.devices:
            raise InputError(f"the {self.name} backend runs on {', '.join(self.devices)}, not {device!r}")
        if precision not in self.precisions:
            raise InputError(
                f"the {self.name} backend runs precision {', '.join(self.precisions)}, not {precision!r}"
            )
        require_all(self.needed_probes(device), f"the {self.name} backend on {device}")
        reason = self.refusal(device, precision)
        if reason:
            raise InputError(reason)

    def unavailable(self, device: str, precision: str) -> str | None:
        """Why `check(device, precision)` would refuse (None: it would not), without raising."""
        try:
            self.check(device, precision)
        except (InputError, MissingDependencyError) as exc:
            return str(exc)
        return None

    def check_options(self, options: Mapping[str, Any]) -> None:
        """InputError naming the options (as CLI flags) this backend does not take; None and
        False count as not given."""
        unknown = sorted(k for k, v in options.items() if k not in self.options and v not in (None, False))
        if unknown:
            flags = lambda names: ", ".join("--" + n.replace("_", "-") for n in names)  # noqa: E731
            raise InputError(
                f"the {self.name} backend takes no {flags(unknown)}"
                + (f"; its options: {flags(self.options)}" if self.options else "")
            )

    def open(self, source: Any, *, device: str, precision: str, **options) -> tuple["ModelSpec", dict[str, "Engine"]]:
        self.check_options(options)
        self.check(device, precision)
        return self.opener(source, device=device, precision=precision,
                           **{k: v for k, v in options.items() if k in self.options})


class Engine(abc.ABC):
    """Base of every runner. Subclasses implement `_activate`, `_deactivate` and `_infer`
    (and `_infer_device` when `device_arrays` is True)."""

    backend: str = ""
    # True when run_device() takes feeds in the engine's device memory and returns device arrays.
    device_arrays: bool = False

    def __init__(self, name: str, device: str, precision: str):
        self.name = name
        self.device = device
        self.precision = precision
        self.is_active = False
        self.inputs: tuple[TensorMeta, ...] = ()
        self.outputs: tuple[TensorMeta, ...] = ()
        # Largest batch one call accepts (None: unbounded), and the batch the engine was tuned for
        # (a TensorRT optimization profile's opt; None: no preference). The pipeline's default tile
        # batch is the detail engine's preferred batch.
        self.max_batch: int | None = None
        self.preferred_batch: int | None = None
        # False when the backend also runs spatial sizes other than the declared ones.
        self.fixed_spatial: bool = True

    def _describe_graph(self, path, inputs: Sequence[TensorMeta] | None, outputs: Sequence[TensorMeta] | None,
                        max_batch: int | None) -> None:
        """For engines that run an ONNX graph file: its tensors as the caller gives them (from the
        manifest), else as the graph declares them."""
        if inputs is None or outputs is None:
            inputs, outputs = graph_interface(path)
        self.inputs, self.outputs = tuple(inputs), tuple(outputs)
        self.max_batch = max_batch

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

    def run_device(self, feeds: Mapping[str, Any]) -> dict[str, Any]:
        """One call on arrays already in this engine's device memory (DLPack: CuPy on cuda,
        NumPy on cpu), taken without a copy; outputs stay in device memory (DLPack arrays)."""
        if not self.device_arrays:
            raise EngineError(f"the {self.backend} engine {self.name!r} takes host arrays only; use run()")
        if not self.is_active:
            raise EngineError(f"engine {self.name!r} is not active; use it in a `with` block or call activate()")
        batch = self._check_feeds(feeds, host=False)
        return self._infer_device({meta.name: feeds[meta.name] for meta in self.inputs}, batch)

    def _infer_device(self, feeds: dict[str, Any], batch: int) -> dict[str, Any]:
        raise EngineError(f"the {self.backend} engine has no device path")

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


__all__ = [
    "ARTIFACT_KINDS",
    "Backend",
    "DEVICES",
    "PRECISIONS",
    "Engine",
    "EngineError",
    "TensorMeta",
    "check_choice",
    "require_all",
    "run_in_chunks",
]
