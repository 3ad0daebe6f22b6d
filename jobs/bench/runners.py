"""How each kind of benchmark variant is run: mattrt's tiled Pipeline through the deployment
chain, the authors' resize-the-whole-image way, rembg's whole-image onnxruntime session, and a
Triton server. Each runner opens once and then runs one image at a time."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mattrt.deploy.cache import ArtifactCache
from mattrt.deploy.plan import DeploymentRequest, open_pipeline
from mattrt.deploy.sources import model_source
from mattrt.engines.backends import BACKENDS
from mattrt.jobs.bench.plan import TRITON, BenchPlan, Variant
from mattrt.jobs.bench.rembg import RembgWay
from mattrt.jobs.bench.whole_image import whole_image_graph
from mattrt.lazy import lazy_import
from mattrt.models import create_model
from mattrt.runtime import threads as thread_settings
from mattrt.runtime.ops import resize_image

if TYPE_CHECKING:
    from mattrt.jobs.bench.measure import HostMemory

torch = lazy_import("torch", probe="torch")
ort = lazy_import("onnxruntime", probe="onnxruntime")


class Runner:
    """Opens what a variant runs; run(image) -> (alpha, seconds per stage)."""

    variant: Variant

    def open(self) -> None: ...

    def close(self) -> None: ...

    def before_run(self) -> None:
        """Per-run settings shared by the process (torch's thread count)."""
        if self.variant.backend == "torch" and self.variant.threads is not None:
            thread_settings.configure_torch(self.variant.threads)

    def run(self, image: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
        raise NotImplementedError

    def describe(self) -> dict:
        return {}

    def stage_memory(self, image: np.ndarray, memory: "HostMemory") -> dict:
        return {}


def _stage_seconds(timings: dict[str, float]) -> dict[str, float]:
    """A Pipeline's step timings folded into semantic, detail and pixel work."""
    folded = {"semantic": timings.get("semantic", 0.0), "detail": timings.get("detail", 0.0)}
    folded["pixel"] = sum(v for k, v in timings.items() if k not in ("semantic", "detail", "remote"))
    if "remote" in timings:
        folded = {"network": timings["remote"]}
    return folded


class _PipelineRunner(Runner):
    """A variant run through a Pipeline (in-process or a server's stand-in) that `open` sets."""

    pipeline = None

    def close(self) -> None:
        if self.pipeline is not None:
            self.pipeline.close()
            self.pipeline = None

    def run(self, image):
        result = self.pipeline.run(image)
        return result.alpha, _stage_seconds(result.timings)


class TiledRunner(_PipelineRunner):
    def __init__(self, variant: Variant, plan: BenchPlan, log):
        self.variant, self.plan, self.log = variant, plan, log
        self.pipeline = None

    def open(self) -> None:
        v, plan = self.variant, self.plan
        # The model's own tile is passed as None: the same artifact cache entry `mattrt infer` uses.
        tile = None if plan.settings["fixed_tile"] or v.tile == plan.settings["tile_size"] else v.tile
        backend_options = {"threads": v.threads} if "threads" in BACKENDS[v.backend].options else {}
        request = DeploymentRequest(model=plan.model, artifacts=plan.artifacts, checkpoint=plan.checkpoint,
                                    backend=v.backend, device=v.device, precision=v.precision, tile_size=tile,
                                    backend_options=backend_options, pipeline_options={"batch": v.batch},
                                    cache_dir=plan.options.cache_dir)
        self.pipeline = open_pipeline(request, log=self.log).__enter__()

    def describe(self) -> dict:
        described = self.pipeline.describe()
        return {k: described.get(k) for k in ("tile_size", "overlap", "margin", "batch", "semantic_size",
                                               "pixel_ops", "selection")}

    def stage_memory(self, image, memory):
        """Peak RSS added by the semantic pass alone and by one detail batch alone."""
        pipeline = self.pipeline
        before = memory.start()
        pipeline.semantic_pass(image)
        semantic = memory.added_mib(before)
        tile = pipeline.tile_size
        feeds = {"image": np.zeros((pipeline.batch, 3, tile, tile), np.float32)}
        if pipeline.spec.guidance != "none":
            feeds["guidance"] = np.zeros((pipeline.batch, pipeline.spec.guidance_channels, tile, tile), np.float32)
        before = memory.start()
        pipeline.engines["detail"].run(feeds)
        return {"semantic": semantic, "detail_batch": memory.added_mib(before)}


class AlphaRunner(TiledRunner):
    """mattrt's Pipeline for a network whose output is alpha: the network at its canvas, the alpha
    upsampled and refined at full resolution (the model card's refinement, or the variant's)."""

    def open(self) -> None:
        v, plan = self.variant, self.plan
        backend_options = {"threads": v.threads} if "threads" in BACKENDS[v.backend].options else {}
        request = DeploymentRequest(model=plan.model, artifacts=plan.artifacts, checkpoint=plan.checkpoint,
                                    backend=v.backend, device=v.device, precision=v.precision,
                                    backend_options=backend_options,
                                    pipeline_options={} if v.refine is None else {"refine": v.refine},
                                    cache_dir=plan.options.cache_dir)
        self.pipeline = open_pipeline(request, log=self.log).__enter__()

    def run(self, image):
        result = self.pipeline.run(image)
        timings = dict(result.timings)
        return result.alpha, {"semantic": timings.pop("semantic", 0.0), "refine": timings.pop("refine", 0.0),
                              "pixel": sum(timings.values())}

    def describe(self) -> dict:
        described = self.pipeline.describe()
        return {k: described.get(k) for k in ("semantic_size", "fit", "refine", "pixel_ops", "selection")}

    def stage_memory(self, image, memory):
        """Peak RSS added by the network's pass alone."""
        before = memory.start()
        self.pipeline.semantic_pass(image)  # channel order does not change the memory
        return {"semantic": memory.added_mib(before)}


class RembgRunner(Runner):
    """rembg's way, or its alpha-matting way, on an imported model's original graph (jobs/bench/rembg.py)."""

    def __init__(self, variant: Variant, plan: BenchPlan):
        imported = model_source(plan.model, cache_dir=plan.options.cache_dir).imported
        self.variant = variant
        self.way = RembgWay(imported.graph, imported.card, variant.threads, alpha_matting=variant.kind == "rembg_am")

    def open(self) -> None:
        self.way.open()

    def close(self) -> None:
        self.way.close()

    def run(self, image):
        return self.way.run(image)

    def describe(self) -> dict:
        return self.way.describe()


def authors_size(height: int, width: int, canvas: int, stride: int) -> tuple[int, int]:
    """The image resized so its longer side is `canvas`, sides cut down to multiples of `stride`
    (as the authors' test code does), at least one stride."""
    scale = canvas / max(height, width)
    return (max(stride, int(height * scale) // stride * stride),
            max(stride, int(width * scale) // stride * stride))


class _WholeImageRunner(Runner):
    """Shared by the two baselines: resize in, one network call, resize the alpha back."""

    def _load_model(self):
        model = create_model(self.model_name, checkpoint=self.checkpoint)
        return model.eval()

    def _normalised(self, image: np.ndarray, height: int, width: int) -> np.ndarray:
        spec = self.settings
        ordered = image[..., ::-1] if spec.channel_order.upper() == "BGR" else image
        resized = resize_image(ordered, height, width)
        resized -= np.asarray(spec.mean, np.float32)
        resized /= np.asarray(spec.std, np.float32)
        return np.ascontiguousarray(resized.transpose(2, 0, 1)[None])

    def _network(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _size(self, height: int, width: int) -> tuple[int, int]:
        raise NotImplementedError

    def run(self, image):
        height, width = image.shape[:2]
        started = time.perf_counter()
        small_h, small_w = self._size(height, width)
        feed = self._normalised(image, small_h, small_w)
        resized = time.perf_counter()
        small_alpha = self._network(feed)
        called = time.perf_counter()
        alpha = resize_image(small_alpha[:, :, None], height, width)[:, :, 0]
        np.clip(alpha, 0.0, 1.0, out=alpha)
        done = time.perf_counter()
        return alpha, {"network": called - resized, "pixel": (resized - started) + (done - called)}


class AuthorsRunner(_WholeImageRunner):
    """Torch eager over the whole image resized to the model's canvas (the authors' way)."""

    def __init__(self, variant: Variant, plan: BenchPlan):
        self.variant, self.model_name, self.checkpoint = variant, plan.model, plan.checkpoint
        self.canvas, self.stride = plan.settings["semantic_size"], plan.settings["stride_multiple"]

    def open(self) -> None:
        thread_settings.configure_torch(self.variant.threads)
        self.model = self._load_model()
        self.settings = self.model.settings

    def _size(self, height, width):
        return authors_size(height, width, self.canvas, self.stride)

    def _network(self, batch):
        with torch.inference_mode():
            return self.model(torch.from_numpy(batch))["alpha"][0, 0].float().numpy()

    def describe(self) -> dict:
        return {"canvas": self.canvas, "resize": "longer side to the canvas, sides cut down to multiples of "
                f"{self.stride}, antialiased bilinear in and out"}


class WholeOnnxRunner(_WholeImageRunner):
    """One onnxruntime session over the whole network at a fixed S x S canvas (rembg's way)."""

    def __init__(self, variant: Variant, plan: BenchPlan, cache_dir: Path | None, log):
        self.variant, self.model_name, self.checkpoint = variant, plan.model, plan.checkpoint
        self.canvas = plan.settings["semantic_size"]
        self.cache_dir, self.log = cache_dir, log

    def open(self) -> None:
        model = self._load_model()
        self.settings = model.settings
        self.graph = whole_image_graph(model, self.canvas, ArtifactCache(self.cache_dir, log=self.log))
        options = ort.SessionOptions()
        options.log_severity_level = 3
        thread_settings.configure_onnxruntime(options, self.variant.threads)
        self.session = ort.InferenceSession(str(self.graph), options, providers=["CPUExecutionProvider"])

    def close(self) -> None:
        self.session = None

    def _size(self, height, width):
        return self.canvas, self.canvas

    def _network(self, batch):
        return self.session.run(None, {"image": batch})[0][0, 0]

    def describe(self) -> dict:
        return {"canvas": self.canvas, "graph": str(self.graph),
                "resize": "to the square canvas ignoring aspect, antialiased bilinear in and out"}


class RemoteRunner(_PipelineRunner):
    """A Triton server through the registry's pipeline_opener."""

    def __init__(self, variant: Variant, url: str):
        self.variant, self.url = variant, url
        self.pipeline = None

    def open(self) -> None:
        backend = BACKENDS[self.variant.backend]
        self.pipeline = backend.pipeline_opener(self.url, device=self.variant.device).__enter__()

    def describe(self) -> dict:
        return self.pipeline.describe()


def make_runner(variant: Variant, plan: BenchPlan, log) -> Runner:
    if variant.kind == "tiled":
        return TiledRunner(variant, plan, log)
    if variant.kind == "alpha":
        return AlphaRunner(variant, plan, log)
    if variant.kind in ("rembg", "rembg_am"):
        return RembgRunner(variant, plan)
    if variant.kind == "authors":
        return AuthorsRunner(variant, plan)
    if variant.kind == "whole_onnx":
        return WholeOnnxRunner(variant, plan, plan.options.cache_dir, log)
    if variant.kind == TRITON:
        return RemoteRunner(variant, plan.options.triton_url)
    raise AssertionError(variant.kind)


__all__ = ["AlphaRunner", "AuthorsRunner", "RembgRunner", "RemoteRunner", "Runner", "TiledRunner", "WholeOnnxRunner", "authors_size", "make_runner"]
