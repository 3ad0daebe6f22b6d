"""Calibration data: the stage inputs the runtime really produces, recorded from its Pipeline.

    source = parse_calibration("synthetic:32")              # or "photographs", or a folder of images
    feeds = collect_stage_feeds("exports/aim", source)      # {"semantic": StageFeeds, "detail": ...}

The FP32 graphs of an export directory run through `mattrt.runtime.pipeline.Pipeline` (letterboxing,
tiling, guidance, exactly as inference does) with every stage engine wrapped in a recorder, so
the semantic stage's samples are its letterboxed canvases and the detail stage's are the
preprocessed tiles (and guidance crops) of each calibration image. Every recorded batch is split
into single samples; a stage keeps at most `max_samples` of them, drawn evenly (a fixed stride
over the recording order) when there are more.

Images of different sizes are fine: each is letterboxed and tiled on its own, and tiles all
have the graph's fixed size. Images smaller than a tile become one reflected tile.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np
from tqdm import tqdm

from mattrt.data.photographs import PHOTOGRAPHS, photographs
from mattrt.data.synthetic import KINDS, generate_sample, sample_rng
from mattrt.engines.onnxruntime.engine import open_artifacts
from mattrt.errors import InputError
from mattrt.imageio import list_images, read_image
from mattrt.runtime.engine import Engine
from mattrt.runtime.pipeline import Pipeline

# Seeds of calibration.synthetic reserved per purpose, so that no measurement reuses the data
# it was calibrated or trained on: training uses seed 0 (training/train.py), held-out training
# metrics seed 2, calibration seed 1, fidelity reports seed 3.
CALIBRATION_SEED = 1
FIDELITY_SEED = 3
DEFAULT_SYNTHETIC_COUNT = 16
# Width x height of generated calibration / fidelity images: not square, so letterboxing and
# tiling both take part; about twice the 192 px tile of aim_synthetic per side.
DEFAULT_SYNTHETIC_SIZE = (384, 320)
DEFAULT_MAX_SAMPLES = 128


@dataclass(frozen=True)
class DataSource:
    """Images for calibration or evaluation: generated ("synthetic"), the photographs scikit-image
    bundles ("photographs": data/photographs.py; for networks trained on photographs) or read from
    a folder."""

    kind: str  # "synthetic", "photographs" or "folder"
    count: int | None = None  # synthetic: number of images
    folder: Path | None = None
    seed: int = CALIBRATION_SEED
    size: tuple[int, int] = DEFAULT_SYNTHETIC_SIZE  # (width, height) of synthetic images

    def describe(self) -> str:
        if self.kind == "synthetic":
            width, height = self.size
            return f"synthetic:{self.count} (calibration.synthetic seed {self.seed}, {width}x{height})"
        if self.kind == "photographs":
            return f"photographs (scikit-image's bundled {', '.join(PHOTOGRAPHS)})"
        return str(self.folder)


def parse_data_source(text: str | Path, *, seed: int = CALIBRATION_SEED,
                      size: tuple[int, int] = DEFAULT_SYNTHETIC_SIZE) -> DataSource:
    """'synthetic', 'synthetic:N', 'photographs' or a folder of images."""
    value = str(text).strip()
    if value == "photographs":
        return DataSource("photographs", len(PHOTOGRAPHS), seed=seed)
    match = re.fullmatch(r"synthetic(?::(.*))?", value)
    if match:
        count_text = match.group(1)
        if count_text is None:
            return DataSource("synthetic", DEFAULT_SYNTHETIC_COUNT, seed=seed, size=tuple(size))
        if not re.fullmatch(r"\d+", count_text.strip()) or int(count_text) < 1:
            raise InputError(f"{value!r}: the count after 'synthetic:' must be a positive whole number (e.g. synthetic:32)")
        return DataSource("synthetic", int(count_text), seed=seed, size=tuple(size))
    folder = Path(value)
    if not folder.exists():
        raise InputError(f"calibration data {value!r} is neither 'synthetic[:N]', 'photographs' nor an existing folder "
                         "of images")
    if not folder.is_dir():
        raise InputError(f"calibration data {folder} is a file; give a folder of images or 'synthetic[:N]'")
    return DataSource("folder", folder=folder, seed=seed)


def iter_images(source: DataSource) -> Iterator[tuple[str, np.ndarray]]:
    """(name, H x W x 3 uint8/uint16 RGB) for every image of the source; a folder that holds no
    image, or a file that cannot be decoded, raises InputError naming it."""
    if source.kind == "synthetic":

        for index in range(int(source.count)):
            kind = KINDS[index % len(KINDS)]
            sample = generate_sample(kind, source.size, sample_rng(source.seed, index))
            yield f"synthetic-{source.seed}-{index:04d}-{sample.variant}", sample.image
        return
    if source.kind == "photographs":
        yield from photographs()
        return

    files = list_images(source.folder)
    if not files:
        raise InputError(
            f"calibration folder {source.folder} holds no images (PNG, JPEG, WebP or TIFF directly inside it)"
        )
    for path in files:
        try:
            loaded = read_image(path)
        except InputError as exc:
            raise InputError(f"calibration image {path} cannot be read: {exc}") from None
        except OSError as exc:
            raise InputError(f"calibration image {path} cannot be read: {exc.strerror or exc}") from None
        yield path.name, loaded.rgb


def iter_samples(source: DataSource):
    """For synthetic sources: the full `Sample` objects (image + exact alpha) in order."""

    if source.kind != "synthetic":
        raise InputError("ground-truth samples exist only for synthetic data")
    for index in range(int(source.count)):
        yield generate_sample(KINDS[index % len(KINDS)], source.size, sample_rng(source.seed, index))


class RecordingEngine(Engine):
    """Wraps an engine: runs it and keeps every feed it received (split into single samples)."""

    def __init__(self, inner: Engine, on_feed=None):
        super().__init__(inner.name, inner.device, inner.precision)
        self.inner = inner
        self.backend = inner.backend
        self.inputs, self.outputs = inner.inputs, inner.outputs
        self.max_batch, self.fixed_spatial = inner.max_batch, inner.fixed_spatial
        self.samples: list[dict[str, np.ndarray]] = []
        self.on_feed = on_feed

    def _activate(self) -> None:
        self.inner.activate()

    def _deactivate(self) -> None:
        self.inner.deactivate()

    def _infer(self, feeds: dict[str, np.ndarray], batch: int) -> dict[str, np.ndarray]:
        for name, array in feeds.items():
            if not np.isfinite(array).all():
                raise InputError(f"stage {self.name!r}: the runtime produced NaN or infinite values in input {name!r}")
        for index in range(batch):
            self.samples.append({name: np.array(array[index : index + 1], copy=True) for name, array in feeds.items()})
        outputs = self.inner.run(feeds)
        for name, array in outputs.items():
            if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
                raise InputError(
                    f"stage {self.name!r}: the FP32 graph produced NaN or infinite values in output {name!r}; "
                    "calibration needs finite activations"
                )
        if self.on_feed is not None:
            self.on_feed(self.name, batch)
        return outputs


@dataclass
class StageFeeds:
    """Recorded single-sample feeds of one stage."""

    stage: str
    samples: list[dict[str, np.ndarray]]
    recorded: int  # samples seen before subsampling
    images: list[str] = field(default_factory=list)

    @property
    def input_names(self) -> list[str]:
        return list(self.samples[0]) if self.samples else []

    def stacked(self) -> dict[str, np.ndarray]:
        """{input: N x ...} of all kept samples."""
        return {name: np.concatenate([s[name] for s in self.samples]) for name in self.input_names}

    def batches(self, batch: int) -> Iterator[dict[str, np.ndarray]]:
        stacked = self.stacked()
        total = len(self.samples)
        for start in range(0, total, batch):
            yield {name: array[start : start + batch] for name, array in stacked.items()}


def subsample(samples: list, limit: int) -> list:
    """At most `limit` items evenly spread over the list (deterministic)."""
    if limit < 1:
        raise InputError(f"the calibration sample limit must be at least 1, got {limit}")
    if len(samples) <= limit:
        return list(samples)
    positions = np.linspace(0, len(samples) - 1, limit).round().astype(int)
    return [samples[i] for i in positions]


def collect_stage_feeds(directory: str | Path, source: DataSource, *, max_samples: int = DEFAULT_MAX_SAMPLES,
                        batch: int | None = None, progress: bool = False) -> dict[str, StageFeeds]:
    """Run the FP32 graphs of an export directory through the runtime's Pipeline over the
    source's images and return each stage's recorded inputs (see the module docstring)."""

    spec, engines = open_artifacts(directory, precision="fp32")
    recorders: Mapping[str, RecordingEngine] = {name: RecordingEngine(engine) for name, engine in engines.items()}
    if spec.semantic_output == "alpha":  # one network: its inputs are all there is to record
        options = {"refine": "none"}
    else:
        options = {"batch": batch or min(4, engines["detail"].max_batch or 4)}
    names: list[str] = []
    images = iter_images(source)
    if progress:

        images = tqdm(images, total=source.count, desc="calibration images", leave=False)
    with Pipeline(spec, recorders, **options) as pipeline:
        for name, image in images:
            pipeline.run(image)
            names.append(name)
    if not names:
        raise InputError(f"calibration data {source.describe()} gave no images")
    result = {}
    for stage, recorder in recorders.items():
        if not recorder.samples:
            raise InputError(f"the pipeline never called stage {stage!r} on the calibration images")
        result[stage] = StageFeeds(stage, subsample(recorder.samples, max_samples), len(recorder.samples), names)
    return result


__all__ = [
    "CALIBRATION_SEED",
    "DEFAULT_MAX_SAMPLES",
    "DEFAULT_SYNTHETIC_COUNT",
    "DEFAULT_SYNTHETIC_SIZE",
    "DataSource",
    "FIDELITY_SEED",
    "RecordingEngine",
    "StageFeeds",
    "collect_stage_feeds",
    "iter_images",
    "iter_samples",
    "parse_data_source",
    "subsample",
]
