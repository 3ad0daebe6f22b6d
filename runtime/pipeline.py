"""The Pipeline: one data flow for every model and every backend (README.md, "How it works").

    with Pipeline(spec, engines) as pipeline:       # mattrt.deploy opens one from a model, an export or a card
        result = pipeline.run(rgb)                  # H x W x 3 uint8/uint16/float
    result.alpha                                    # H x W float32 in [0, 1]

Steps, for an H x W image:
1. Semantic pass on the fixed S x S canvas. The image is resized keeping its aspect (by the
   global factor `semantic_scale`, or to fit S by default; antialiased bilinear), normalised,
   and centred on the canvas; the rest of the canvas is 0 after normalisation, i.e. the
   normalisation mean colour (the neutral input the networks saw most). The trimap
   probabilities of the content region are kept at that low resolution.
2. The detail image: the input itself, or resized by the local factor `detail_scale` (AIM's
   hybrid inference runs its local pass at 1/2 scale).
3. Guidance at detail resolution: the trimap probabilities upsampled bilinearly
   (align_corners=False), evaluated only where a tile or a band of rows needs them, with
   exactly the coordinates of one full F.interpolate; for Semantic Image Matting ("sim") the
   guidance of models/sim.py, built once from the classifier stages.
4. A TilePlan of T x T tiles overlapping by O; batches of tiles (image crop + guidance crop,
   reflected past the image edge) go through the detail engine.
5. Window-weighted stitching into a band of rows: rows no later tile touches are normalised
   and handed on at once, so the accumulator holds about T + (rows a batch spans) rows.
6. Fusion (models/fusion.py FUSIONS[kind]) of the stitched raw alpha (upsampled back to H x W
   when detail_scale != 1) with the trimap, band by band, clamped to [0, 1].

Memory: besides the input image and the H x W float32 alpha, the pipeline holds the low-res
trimap, one batch of tiles (inputs, outputs, network activations) and a band of rows of the
image width: peak memory grows with the tile batch and the image width, not with the number
of tiles. Exception: "sim" guidance (click maps are distance transforms over the whole hard
trimap, score maps are stitched over classifier windows of the whole image) is built for the
whole detail image at once: (3 + 3 + 28) float32 planes at detail resolution.

An imported network whose output is alpha (spec.semantic_output "alpha", e.g. ISNet) runs step 1
only, on a canvas it is stretched to or letterboxed onto (spec.fit); its alpha is upsampled to
H x W with the trimap's coordinates and refined at full resolution where it is uncertain
(runtime/refine.py; `refine="none"` keeps the upsampled alpha).

`run(image, whole=True)` is the reference the tiled result is measured against: the same
canvas in one detail call with the same guidance (engines that run any size only: torch).

Where the per-pixel work of steps 3-6 runs is the `pixel_ops` option (runtime/pixel_ops.py):
"host" (NumPy), "device" (the CUDA kernels through CuPy, with zero-copy feeds to a torch CUDA
engine), "emulate" (the same kernels on their g++ host emulation: tests), or "auto" (default):
"device" when the detail engine runs on CUDA and takes device arrays (torch, TensorRT) and CuPy
has a device, else "host".
describe() reports the choice and why. The results are the same bit for bit; the whole-image
reference mode always runs on the host. The semantic pass (step 1) and the detail resize
(step 2) stay on the host in every mode.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np

from mattrt.errors import InputError
from mattrt.fusion_kinds import fusion_kind
from mattrt.imageio import pixel_count
from mattrt.lazy import lazy_import
from mattrt.resources import require_memory
from mattrt.runtime import ops
from mattrt.runtime import threads as thread_settings
from mattrt.runtime.artifacts import MattingResult, ModelSpec, check_engines
from mattrt.runtime.engine import Engine, run_in_chunks
from mattrt.runtime.pixel_ops import FUSION_ROWS, HostPixelOps, select_pixel_ops
from mattrt.runtime.refine import RefineOptions, refine_alpha
from mattrt.runtime.tiling import TilePlan, check_tiling, default_margin

# Semantic Image Matting's guidance (click maps, classifier score maps) lives with its model and
# imports torch: bound lazily, so that the pipeline loads torch only for that model.
sim = lazy_import("mattrt.models.sim_guidance")

# Same limit as the image reader's decompression-bomb guard: 200 megapixels.
DEFAULT_MAX_PIXELS = 200_000_000
GUIDANCE_KINDS = ("none", "trimap", "sim")
FITS = ("letterbox", "stretch")
# Host memory estimates checked before an image is processed (mattrt.resources.require_memory):
# the detail image and its guidance planes (float32 RGB + up to 3 planes) plus stitching rows;
# the fused alpha and the input at full size; per pixel of a tile batch, the inputs and the
# detail network's activations (its widest stages hold on the order of 64 float32 channels).
# Rough upper figures meant to refuse absurd options, not to budget tight ones.
DETAIL_BYTES_PER_PIXEL = 32
IMAGE_BYTES_PER_PIXEL = 8
TILE_BYTES_PER_PIXEL = 256
# Tiles per detail call unless the detail engine prefers another batch (Engine.preferred_batch).
DEFAULT_TILE_BATCH = 4

ProgressCallback = Callable[[int, int], None]


@dataclass
class _Timer:
    seconds: dict[str, float] = field(default_factory=dict)
    synchronize: Callable[[], None] = lambda: None  # device work is asynchronous: wait before reading the clock

    def add(self, key: str, started: float) -> float:
        self.synchronize()
        now = time.perf_counter()
        self.seconds[key] = self.seconds.get(key, 0.0) + (now - started)
        return now


class Pipeline:
    """Drives a set of stage engines over images of any size (see the module docstring)."""

    def __init__(
        self,
        spec: ModelSpec,
        engines: Mapping[str, Engine],
        *,
        overlap: int | None = None,
        margin: int | None = None,
        batch: int | None = None,
        semantic_scale: float | None = None,
        detail_scale: float = 1.0,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        pixel_ops: str = "auto",
        refine: str | None = None,
    ):
        check_engines(spec, engines)
        self.spec = spec
        self.engines = dict(engines)
        semantic = self.engines["semantic"]
        self.alpha_network = spec.semantic_output == "alpha"
        if spec.fit not in FITS:
            raise InputError(f"model {spec.name!r}: fit {spec.fit!r} is not one of {', '.join(FITS)}")
        self.semantic_size = semantic.spatial_size if semantic.fixed_spatial else int(spec.semantic_size)
        if semantic_scale is not None and not (isinstance(semantic_scale, (int, float)) and semantic_scale > 0):
            raise InputError(f"semantic scale must be a positive number (or None to fit the canvas), got {semantic_scale!r}")
        if semantic_scale is not None and spec.fit == "stretch":
            raise InputError(f"model {spec.name!r} stretches the whole image to its {self.semantic_size} x "
                             f"{self.semantic_size} canvas; a semantic scale does not apply")
        if not (isinstance(detail_scale, (int, float)) and detail_scale > 0 and math.isfinite(detail_scale)):
            raise InputError(f"detail scale must be a positive number, got {detail_scale!r}")
        self.semantic_scale = semantic_scale
        self.detail_scale = float(detail_scale)
        if max_pixels is not None and (not isinstance(max_pixels, int) or max_pixels < 1):
            raise InputError(f"max_pixels must be a positive integer or None, got {max_pixels!r}")
        self.max_pixels = max_pixels
        self._mean = np.asarray(spec.mean, dtype=np.float32)
        self._std = np.asarray(spec.std, dtype=np.float32)
        if spec.channel_order.upper() not in ("RGB", "BGR"):
            raise InputError(f"channel order {spec.channel_order!r} is not RGB or BGR")
        if self.alpha_network:
            self._init_refinement(refine, overlap=overlap, margin=margin, batch=batch)
            self.pixel_ops, self.pixel_ops_reason = select_pixel_ops(pixel_ops, semantic)
        else:
            if refine is not None:
                raise InputError(f"model {spec.name!r} refines with its detail network; --refine applies to imported "
                                 "networks whose output is alpha")
            self._init_tiling(overlap, margin, batch)
            self.pixel_ops, self.pixel_ops_reason = select_pixel_ops(pixel_ops, self.engines["detail"])
        # How this pipeline came to be (backend choice and why, artifact cache use), for summaries.
        self.notes: dict = {}

    def _init_tiling(self, overlap: int | None, margin: int | None, batch: int | None) -> None:
        spec = self.spec
        if spec.guidance not in GUIDANCE_KINDS:
            raise InputError(
                f"model {spec.name!r} needs guidance {spec.guidance!r}; this runtime builds: {', '.join(GUIDANCE_KINDS)}"
            )
        fusion_kind(spec.fusion)
        detail = self.engines["detail"]
        # The tile and canvas were decided where the graphs (or eager engines) were made
        # (deploy/sources.py); fixed-shape engines must agree with the spec that says so.
        self.tile_size = int(spec.tile_size)
        if detail.fixed_spatial and detail.spatial_size != self.tile_size:
            raise InputError(f"model {spec.name!r}: its {detail.backend} detail engine is fixed at "
                             f"{detail.spatial_size} x {detail.spatial_size}, but its spec says tile {self.tile_size}")
        self.overlap = int(overlap if overlap is not None else min(spec.tile_overlap, self.tile_size - spec.stride_multiple))
        self.margin = default_margin(self.overlap) if margin is None else int(margin)
        check_tiling(self.tile_size, self.overlap, spec.stride_multiple, self.margin)
        if batch is None:
            batch = detail.preferred_batch or DEFAULT_TILE_BATCH
        if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
            raise InputError(f"tile batch must be a positive integer, got {batch!r}")
        if detail.max_batch is not None and batch > detail.max_batch:
            raise InputError(
                f"tile batch {batch} exceeds the detail graph's maximum batch {detail.max_batch}; "
                f"use --batch {detail.max_batch} or less, or re-export with a larger max batch"
            )
        self.batch = batch
        require_memory(self._tile_bytes(), f"tile {self.tile_size} x {self.tile_size} in batches of {batch}",
                       "use a smaller --tile or --batch")

    def _init_refinement(self, refine: str | None, **tiling) -> None:
        """An alpha network: no detail tiles; the refinement settings from the spec (its card), the
        method overridable (refine="none" keeps the network's own upsampled alpha)."""
        given = sorted(k for k, v in tiling.items() if v is not None)
        if given:
            raise InputError(f"model {self.spec.name!r} is a single network whose output is alpha: it runs no detail "
                             f"tiles, so {', '.join('--' + k for k in given)} do not apply")
        if self.detail_scale != 1.0:
            raise InputError(f"model {self.spec.name!r} refines at full resolution; --detail-scale does not apply")
        settings = dict(self.spec.refine)
        if refine is not None:
            settings["method"] = refine
        self.refine_options = RefineOptions().replace(**settings)
        self.tile_size = self.refine_options.tile or 0
        self.overlap = self.margin = 0
        self.batch = 1

    def __enter__(self) -> "Pipeline":
        try:
            for engine in self.engines.values():
                engine.activate()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for engine in self.engines.values():
            engine.deactivate()

    def describe(self) -> dict:
        engine = self.engines["semantic" if self.alpha_network else "detail"]
        described = {
            "model": self.spec.name,
            "source": self.spec.source,
            "backend": engine.backend,
            "device": engine.device,
            "precision": engine.precision,
            "semantic_size": self.semantic_size,
            "semantic_output": self.spec.semantic_output,
            "fit": self.spec.fit,
            "semantic_scale": self.semantic_scale,
            "fusion": self.spec.fusion,
            "guidance": self.spec.guidance,
            "trained": self.spec.trained,
            "kernels": bool(getattr(engine, "kernels", False)),
            "pixel_ops": self.pixel_ops.name,
            "pixel_ops_reason": self.pixel_ops_reason,
            "threads": thread_settings.describe(),
        }
        if self.alpha_network:
            described["refine"] = dataclasses.asdict(self.refine_options)
        else:
            described.update(tile_size=self.tile_size, overlap=self.overlap, margin=self.margin, batch=self.batch,
                             detail_scale=self.detail_scale)
        if self.notes:
            described["selection"] = dict(self.notes)
        return described

    # -- sizes ------------------------------------------------------------------------------------
    def check_size(self, height: int, width: int) -> None:
        if height < 1 or width < 1:
            raise InputError(f"the image has zero size ({width}x{height})")
        if self.max_pixels is not None and height * width > self.max_pixels:
            raise InputError(
                f"image {width}x{height} = {pixel_count(height * width)} exceeds the maximum of "
                f"{pixel_count(self.max_pixels)}; raise the limit (--max-pixels) to process it "
                "(mattrt never downscales silently)"
            )

        detail_h, detail_w = self.detail_size(height, width)
        needed = detail_h * detail_w * DETAIL_BYTES_PER_PIXEL + height * width * IMAGE_BYTES_PER_PIXEL + self._tile_bytes()
        require_memory(needed, f"image {width}x{height} at detail scale {self.detail_scale:g} ({detail_w}x{detail_h} "
                       "detail pixels)", "use a smaller --detail-scale, --tile or --batch")

    def _tile_bytes(self) -> int:
        return self.batch * self.tile_size * self.tile_size * TILE_BYTES_PER_PIXEL

    def content_size(self, height: int, width: int) -> tuple[int, int]:
        """Height and width of the image on the semantic canvas."""
        canvas = self.semantic_size
        scale = canvas / max(height, width) if self.semantic_scale is None else self.semantic_scale
        content_h = max(1, int(round(height * scale)))
        content_w = max(1, int(round(width * scale)))
        if content_h > canvas or content_w > canvas:
            raise InputError(
                f"semantic scale {scale:g} makes the {width}x{height} image {content_w}x{content_h}, larger than the "
                f"{canvas} x {canvas} semantic canvas; use a scale of at most {canvas / max(height, width):.4g} "
                "(or none, to fit the canvas)"
            )
        return content_h, content_w

    def detail_size(self, height: int, width: int) -> tuple[int, int]:
        if self.detail_scale == 1.0:
            return height, width
        return max(1, int(round(height * self.detail_scale))), max(1, int(round(width * self.detail_scale)))

    def plan(self, height: int, width: int, whole: bool = False) -> TilePlan:
        detail_h, detail_w = self.detail_size(height, width)
        if whole:
            return TilePlan.whole(detail_h, detail_w, self.tile_size, self.spec.stride_multiple)
        return TilePlan.build(detail_h, detail_w, self.tile_size, self.overlap, self.spec.stride_multiple, self.margin)

    # -- the passes -----------------------------------------------------------------------------
    def _model_order(self, image: np.ndarray) -> np.ndarray:
        return image[..., ::-1] if self.spec.channel_order.upper() == "BGR" else image

    def semantic_pass(self, image: np.ndarray) -> np.ndarray:
        """The semantic stage's output for the image's content region on the canvas: trimap
        probabilities (3 x h x w), or an alpha network's alpha (1 x h x w). The image is
        letterboxed onto the canvas (aspect kept), or stretched to it (spec.fit "stretch")."""
        height, width = image.shape[:2]
        canvas_size = self.semantic_size
        if self.spec.fit == "stretch":
            content_h = content_w = canvas_size
        else:
            content_h, content_w = self.content_size(height, width)
        resized = ops.resize_image(image, content_h, content_w)
        resized -= self._mean
        resized /= self._std
        canvas = np.zeros((1, 3, canvas_size, canvas_size), dtype=np.float32)
        top, left = (canvas_size - content_h) // 2, (canvas_size - content_w) // 2
        canvas[0, :, top : top + content_h, left : left + content_w] = resized.transpose(2, 0, 1)
        name, channels = ("alpha", 1) if self.alpha_network else ("trimap", 3)
        output = self.engines["semantic"].run({"image": canvas})[name]
        if output.shape[:2] != (1, channels):
            raise InputError(f"semantic stage returned {name} of shape {output.shape}; expected 1 x {channels} x S x S")
        return np.ascontiguousarray(output[0, :, top : top + content_h, left : left + content_w], dtype=np.float32)

    def _sim_guidance(self, detail_image: np.ndarray, low: np.ndarray) -> np.ndarray:
        """The full "sim" guidance (G x Hd x Wd) from models/sim.py with the classifier engines."""

        settings = self.spec.settings
        windows = tuple(int(w) for w in settings["classifier_windows"])
        height, width = detail_image.shape[:2]
        normalised = ops.resize_image(detail_image, height, width)  # float32 copy in [0, 1]
        normalised -= self._mean
        normalised /= self._std
        image = normalised.transpose(2, 0, 1)[None]
        del normalised
        trimap = ops.upsample_region(low, height, width, np.arange(height), np.arange(width))[None]

        def classify_window(crops: np.ndarray, levels: np.ndarray) -> np.ndarray:
            size = crops.shape[-1]
            name = sim.classifier_stage_name(size)
            if name not in self.engines:
                raise InputError(f"model {self.spec.name!r} has no classifier stage for {size} px windows")
            feeds = {"image": np.ascontiguousarray(crops, dtype=np.float32), "trimap_level": np.ascontiguousarray(levels, dtype=np.float32)}
            return run_in_chunks(self.engines[name], feeds)["cam"]

        guidance = sim.sim_guidance(
            np.ascontiguousarray(image),
            trimap,
            classify_window,
            windows=windows,
            click_scale=float(settings["click_scale"]),
            num_classes=int(settings["num_classes"]),
            window_batch=int(settings["window_batch"]),
        )
        if guidance.shape[1] != self.spec.guidance_channels:
            raise InputError(
                f"sim guidance has {guidance.shape[1]} channels; the detail stage reads {self.spec.guidance_channels}"
            )
        return np.ascontiguousarray(guidance[0], dtype=np.float32)

    def run(
        self,
        image: np.ndarray,
        *,
        whole: bool = False,
        keep_detail: bool = False,
        progress: ProgressCallback | None = None,
    ) -> MattingResult:
        """Alpha matte of one H x W x 3 RGB image (uint8, uint16, or float32 in [0, 1])."""
        ops.check_rgb(image)
        height, width = image.shape[:2]
        self.check_size(height, width)
        if self.alpha_network:
            if whole or keep_detail:
                raise InputError(f"model {self.spec.name!r} has no detail stage: whole-image mode and keep_detail apply "
                                 "to tiled detail networks")
            with self.pixel_ops.scope():
                return self._run_alpha(image, self.pixel_ops, progress)
        detail_engine = self.engines["detail"]
        if whole and detail_engine.fixed_spatial:
            raise InputError(
                f"whole-image mode needs a detail engine that runs any size (torch); the {detail_engine.backend} "
                f"graph is fixed at {detail_engine.spatial_size} x {detail_engine.spatial_size}"
            )
        # The whole-image reference runs its per-pixel work on the host (one odd-shaped tile).
        pixel = HostPixelOps() if whole else self.pixel_ops
        with pixel.scope():
            return self._run(image, pixel, whole, keep_detail, progress)

    def _run(self, image, pixel, whole: bool, keep_detail: bool, progress: ProgressCallback | None) -> MattingResult:
        height, width = image.shape[:2]
        detail_engine = self.engines["detail"]
        timer = _Timer(synchronize=pixel.synchronize)
        started = time.perf_counter()
        ordered = self._model_order(image)

        low = self.semantic_pass(ordered)
        started = timer.add("semantic", started)

        detail_h, detail_w = self.detail_size(height, width)
        if (detail_h, detail_w) == (height, width):
            detail_image = ordered
        else:
            detail_image = ops.resize_image(ordered, detail_h, detail_w)
            started = timer.add("detail_resize", started)
        guidance_planes = None
        if self.spec.guidance == "sim":
            guidance_planes = self._sim_guidance(detail_image, low)
            started = timer.add("guidance", started)

        plan = self.plan(height, width, whole=whole)
        tile = (plan.canvas_height, plan.canvas_width) if whole else plan.tile
        offsets = plan.offsets()
        window_stack, window_index = plan.window_stack()
        detail_source = pixel.upload_image(detail_image)
        low_source = pixel.upload(low)
        window_stack = pixel.upload(window_stack)
        if pixel.transfers:  # host pixel ops move nothing: no upload/download steps in their timings
            started = timer.add("upload", started)
        stitcher = _BandStitcher(detail_w, pixel)
        writer = _FusionWriter(low, low_source, detail_h, detail_w, height, width, self.spec.fusion, keep_detail, pixel)
        total = len(offsets)
        for start in range(0, total, self.batch):
            indices = np.arange(start, min(start + self.batch, total))
            batch_offsets = offsets[indices]
            feeds = {"image": pixel.preprocess_tiles(detail_source, batch_offsets, tile, self._mean, self._std)}
            started = timer.add("preprocess", started)
            if self.spec.guidance == "trimap":
                feeds["guidance"] = pixel.guidance_tiles(low, low_source, detail_h, detail_w, batch_offsets, tile)
            elif self.spec.guidance == "sim":
                feeds["guidance"] = pixel.crop_planes(guidance_planes, batch_offsets, tile)
            started = timer.add("guidance", started)
            raw = pixel.run_engine(detail_engine, feeds)["detail"]
            started = timer.add("detail", started)
            if raw.ndim != 4 or raw.shape[1] != 1:
                raise InputError(f"detail stage returned shape {tuple(raw.shape)}; expected B x 1 x T x T")
            stitcher.add(raw[:, 0], window_stack, window_index[indices], batch_offsets)
            next_top = int(offsets[indices[-1] + 1, 0]) if indices[-1] + 1 < total else detail_h
            rows = stitcher.release(min(next_top, detail_h))
            if rows is not None:
                writer.push(rows)
            started = timer.add("stitch_fusion", started)
            if progress is not None:
                progress(int(indices[-1]) + 1, total)
        alpha = writer.finish()
        started = timer.add("stitch_fusion", started)
        alpha = pixel.to_host(alpha)
        kept = None if writer.detail is None else pixel.to_host(writer.detail)
        if pixel.transfers:
            timer.add("download", started)
        info = {
            **plan.describe(),
            "whole": whole,
            "image": [height, width],
            "detail_size": [detail_h, detail_w],
            "semantic_content": list(low.shape[1:]),
            "pixel_ops": pixel.name,
        }
        return MattingResult(alpha=alpha, trimap=low, timings=timer.seconds, plan=info, detail=kept)

    def _run_alpha(self, image: np.ndarray, pixel, progress: ProgressCallback | None) -> MattingResult:
        """An alpha network: its alpha at the canvas, upsampled to the image (one F.interpolate's
        bilinear coordinates, as the trimap is), then refined at full resolution (runtime/refine.py)."""
        height, width = image.shape[:2]
        timer = _Timer(synchronize=pixel.synchronize)
        started = time.perf_counter()
        low = self.semantic_pass(self._model_order(image))
        started = timer.add("semantic", started)
        alpha = ops.upsample_region(low, height, width, np.arange(height), np.arange(width))[0]
        np.clip(alpha, 0.0, 1.0, out=alpha)
        started = timer.add("upsample", started)
        if self.refine_options.method != "none":
            alpha = refine_alpha(ops.resize_image(image, height, width), alpha, self.refine_options, pixel=pixel)
            timer.add("refine", started)
        if progress is not None:
            progress(1, 1)
        info = {"image": [height, width], "semantic_content": list(low.shape[1:]), "fit": self.spec.fit,
                "refine": self.refine_options.method, "tiles": None, "pixel_ops": pixel.name}
        return MattingResult(alpha=alpha, trimap=low, timings=timer.seconds, plan=info)


class _BandStitcher:
    """Accumulates tiles into a band of rows [start, end) of the detail image."""

    def __init__(self, width: int, pixel: HostPixelOps):
        self.pixel = pixel
        self.xp = pixel.xp
        self.width = width
        self.start = 0
        self.acc = self.xp.zeros((0, width), dtype=np.float32)
        self.weight = self.xp.zeros((0, width), dtype=np.float32)

    def add(self, tiles, window_stack, window_index: np.ndarray, offsets: np.ndarray) -> None:
        bottom = int(offsets[:, 0].max()) + tiles.shape[1]
        grow = bottom - (self.start + self.acc.shape[0])
        if grow > 0:
            xp = self.xp
            self.acc = xp.concatenate([self.acc, xp.zeros((grow, self.width), np.float32)])
            self.weight = xp.concatenate([self.weight, xp.zeros((grow, self.width), np.float32)])
        relative = offsets - np.array([self.start, 0])
        self.pixel.stitch_accumulate(self.acc, self.weight, tiles, window_stack, relative, window_index)

    def release(self, upto: int):
        """Normalised rows [start, upto) (no later tile touches them); they leave the band."""
        count = upto - self.start
        if count <= 0:
            return None
        rows = self.pixel.stitch_normalize(self.acc[:count], self.weight[:count])
        self.acc = self.acc[count:].copy()
        self.weight = self.weight[count:].copy()
        self.start = upto
        return rows


class _FusionWriter:
    """Turns stitched detail rows (detail resolution, in order) into fused alpha rows (H x W)."""

    def __init__(self, low: np.ndarray, low_source, detail_h: int, detail_w: int, height: int, width: int, fusion: str,
                 keep_detail: bool, pixel: HostPixelOps):
        self.pixel = pixel
        xp = self.xp = pixel.xp
        self.low, self.low_source = low, low_source
        self.height, self.width = height, width
        self.detail_h, self.detail_w = detail_h, detail_w
        self.fusion = fusion
        self.alpha = xp.empty((height, width), dtype=np.float32)
        self.detail = xp.empty((detail_h, detail_w), dtype=np.float32) if keep_detail else None
        self.same_size = (detail_h, detail_w) == (height, width)
        self.next_row = 0  # next alpha row to write
        self.buffer = xp.zeros((0, detail_w), dtype=np.float32)
        self.buffer_start = 0  # detail row of buffer[0]
        self.received = 0  # detail rows received so far
        if not self.same_size:
            # row taps stay on the host (they drive the bookkeeping); column taps live with the rows
            self.y_lo, self.y_hi, self.wy_lo, self.wy_hi = ops.bilinear_taps(np.arange(height), detail_h, height)
            self.x_lo, self.x_hi, self.wx_lo, self.wx_hi = (
                xp.asarray(t) for t in ops.bilinear_taps(np.arange(width), detail_w, width)
            )

    def push(self, rows) -> None:
        xp = self.xp
        if self.detail is not None:
            self.detail[self.received : self.received + rows.shape[0]] = rows
        self.received += rows.shape[0]
        if self.same_size:
            self._fuse(rows, self.next_row)
            return
        self.buffer = xp.concatenate([self.buffer, rows]) if self.buffer.size else rows
        ready = int(np.searchsorted(self.y_hi, self.received, side="left"))
        if ready > self.next_row:
            lo = xp.asarray(self.y_lo[self.next_row : ready] - self.buffer_start)
            hi = xp.asarray(self.y_hi[self.next_row : ready] - self.buffer_start)
            wy_lo = xp.asarray(self.wy_lo[self.next_row : ready])
            wy_hi = xp.asarray(self.wy_hi[self.next_row : ready])
            upper = self.buffer[lo][:, self.x_lo] * self.wx_lo + self.buffer[lo][:, self.x_hi] * self.wx_hi
            lower = self.buffer[hi][:, self.x_lo] * self.wx_lo + self.buffer[hi][:, self.x_hi] * self.wx_hi
            detail = wy_lo[:, None] * upper + wy_hi[:, None] * lower
            self._fuse(xp.ascontiguousarray(detail, dtype=np.float32), self.next_row)
            keep_from = int(self.y_lo[ready]) if ready < self.height else self.received
            drop = keep_from - self.buffer_start
            if drop > 0:
                self.buffer = self.buffer[drop:].copy()
                self.buffer_start = keep_from

    def _fuse(self, detail_rows, first_row: int) -> None:
        count = detail_rows.shape[0]
        self.pixel.fuse_rows(self.low, self.low_source, detail_rows, first_row, self.height, self.width, self.fusion,
                             self.alpha[first_row : first_row + count])
        self.next_row = first_row + count

    def finish(self):
        if self.next_row != self.height or self.received != self.detail_h:
            raise InputError(
                f"stitching ended after {self.received} of {self.detail_h} detail rows and {self.next_row} of "
                f"{self.height} alpha rows; the tiling plan did not cover the image"
            )
        return self.alpha


__all__ = ["DEFAULT_MAX_PIXELS", "FUSION_ROWS", "MattingResult", "Pipeline"]
