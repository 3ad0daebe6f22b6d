"""`--backend auto` on the CPU: a short measurement on first use picks the backend and precision.

On a CPU machine more than one backend can run the graphs (onnxruntime; openvino where it is
installed) at more than one precision (fp32; bf16 where the CPU has it; int8 where the graphs
hold INT8 variants: auto never calibrates on its own). Which is fastest depends on the CPU
(OpenVINO was 1.5-2.5x onnxruntime on an AVX-512 EPYC) and the fidelity of a reduced precision on
the model, so `--backend auto` measures the candidates (deploy/choice.py lists them) once per set
of graphs and machine, and reuses the result:

1. Image: one fixed synthetic image with exact alpha (data/synthetic.py: kind salient_opaque,
   seed 7, sample 0) sized to one detail batch of tiles (2 x 2 tiles at the default batch 4), so a
   run is one semantic call and one detail call at the pipeline's batch.
2. Runs: one candidate at a time opens its pipeline and runs the image once (the warm-up: OpenVINO
   compiles its batch sizes there; its alpha is the one scored in 3); one outside the bounds is
   closed at once. The candidates within the bounds (and the reference) then run up to ROUNDS
   measured rounds, interleaved (each round runs every one once, the first one rotating), fewer
   when a round takes longer than BUDGET_SECONDS / ROUNDS. They stay open for that only while what
   they hold, and the next candidate, fit in half the memory available at the start (full-size aim
   holds 2-3.7 GB per candidate at a 4-tile batch: the measurement peaked at 10.7 GB there, 17.9 GB
   before candidates were opened one at a time); the rest are timed alone afterwards, one at a
   time, and their figure says so. The figure is the median of a candidate's measured runs. Measured
   on a loaded 2-core EPYC: 1-6 s for aim_synthetic (3-5 candidates), 35 s for full-size aim
   with 5 candidates (one onnxruntime fp32 run of one tile batch takes 5-12 s there, and every
   candidate must run once for its fidelity).
   One image is thin evidence for int8: on aim_synthetic int8 kept ΔSAD at 0.39 % here, while on
   other synthetic kinds at 1080p it moved SAD by up to 7 %. Auto considers int8 only where the
   graphs already hold INT8 variants, i.e. where someone made and checked them.
3. Fidelity (when the precision was not asked for): each candidate's alpha against the FP32
   reference (the first fp32 candidate: onnxruntime fp32, today's default) through the whole
   pipeline: ΔSAD = |SAD(candidate, truth) - SAD(reference, truth)| / SAD(reference, truth) <= 1 %,
   and tail |Δalpha| <= 0.1, where tail |Δalpha| is the largest |alpha - reference| outside the
   0.1 % of pixels that moved most (the 99.9th percentile). Why not the plain maximum: fusions
   that take the trimap outside the unknown band (argmax_trimap: AIM, Semantic Image Matting,
   AlphaNet) turn a trimap class that flips at a band edge into a jump of up to 1 at that pixel:
   measured on aim_synthetic (1080p and 384 px synthetic images), bf16 moved the maximum by
   0.13-0.81 with 0.15-3 % of pixels off by more than 1/255, int8 by 0.21-0.97; no bound on
   the maximum tells those apart. 0.1 (25 grey levels) on all but one pixel in a thousand is a
   change nobody sees as structure: measured bf16 tails 0.006-0.087 pass (one 4K image: 0.14),
   int8 tails 0.02-0.42 often do not (and int8 usually fails ΔSAD first). The plain maximum is
   recorded as well. The bounds screen candidates on this one image; they do not bound every image.
   A candidate whose precision the user asked for is not held to the bounds (an explicit
   precision is always honoured); then no reference runs.
4. Choice (`decide`): among candidates that ran and kept the bounds, the fastest; a candidate
   earlier in preference order (deploy/choice.py: fp32 before bf16 before int8, onnxruntime
   before openvino) within PREFERENCE_MARGIN of the fastest wins instead, so noise does not
   trade fidelity for nothing. A candidate that fails to open or run is recorded with its error
   and not chosen; the choice says so.
5. Record: the choice and every figure in an artifact-cache entry keyed by the graphs' SHA-256,
   the candidates and their backends' identities (library versions; OpenVINO's CPU capabilities),
   this machine (CPU model, ISA flags, cores this process may use), the thread count, the batch,
   the bounds and this recipe; later runs reuse it and say so. `mattrt cache clear` forgets it.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from mattrt.data.synthetic import generate_sample, sample_rng
from mattrt.deploy.cache import ArtifactCache
from mattrt.deploy.steps import (
    ArtifactsFromGraphs,
    Engines,
    EnginesFromArtifacts,
    Graphs,
    PipelineFromEngines,
    PrecisionFromGraphs,
    Step,
    produce,
)
from mattrt.errors import InputError
from mattrt.machine import cpu_identity
from mattrt.manifest import graph_precision
from mattrt.metrics import sad
from mattrt.models.checkpoints import file_sha256
from mattrt.resources import available_memory
from mattrt.runtime.engine import Backend
from mattrt.runtime.pipeline import DEFAULT_TILE_BATCH
from mattrt.runtime.threads import available_cores, resolve_threads

Log = Callable[[str], None]
CHOICE_FILE = "choice.json"
# Fidelity bounds against the FP32 reference through the whole pipeline (module docstring, 3).
MAX_DELTA_SAD = 0.01
TAIL_QUANTILE = 0.999
MAX_TAIL_DELTA = 0.1
PREFERENCE_MARGIN = 0.05
ROUNDS = 3
BUDGET_SECONDS = 15.0
IMAGE = {"kind": "salient_opaque", "seed": 7, "index": 0}
RECIPE_VERSION = 1


@dataclass(frozen=True)
class Candidate:
    backend: Backend
    precision: str

    @property
    def label(self) -> str:
        return f"{self.backend.name} {self.precision}"


@dataclass
class Selection:
    """What the measurement chose, over which graphs, and the record of why."""

    graphs: Graphs
    candidate: Candidate
    reason: str
    record: dict = field(default_factory=dict)


def measurement_size(tile: int, overlap: int, batch: int) -> tuple[int, int]:
    """(width, height) of an image that is exactly `batch` tiles: a grid as square as possible."""
    rows = max(r for r in range(1, int(np.sqrt(batch)) + 1) if batch % r == 0)
    cols = batch // rows
    step = tile - overlap
    return tile + (cols - 1) * step, tile + (rows - 1) * step


def alpha_deltas(alpha: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """The tail (TAIL_QUANTILE) and the maximum of |alpha - reference|."""
    delta = np.abs(alpha.astype(np.float32) - reference.astype(np.float32))
    return {"tail_abs_delta": float(np.quantile(delta, TAIL_QUANTILE)), "max_abs_delta": float(delta.max())}


def fidelity(alpha: np.ndarray, reference: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """ΔSAD (relative, against the reference's SAD to the truth), the tail and the maximum of |Δalpha|."""
    ours, theirs = sad(alpha, truth), sad(reference, truth)
    relative = abs(ours - theirs) / theirs if theirs > 0 else (0.0 if ours == theirs else float("inf"))
    return {"sad": ours, "delta_sad": relative, **alpha_deltas(alpha, reference)}


def keeps_bounds(figure: dict) -> str | None:
    """Why a measured candidate breaks the fidelity bounds (None: it keeps them, or was not held to them)."""
    if not figure.get("held_to_bounds"):
        return None
    if figure.get("delta_sad") is None:
        return "no FP32 reference ran to check its fidelity against"
    if figure["delta_sad"] > MAX_DELTA_SAD:
        return f"ΔSAD {100 * figure['delta_sad']:.2f} % > {100 * MAX_DELTA_SAD:g} %"
    if figure["tail_abs_delta"] > MAX_TAIL_DELTA:
        return f"tail |Δalpha| {figure['tail_abs_delta']:.3f} > {MAX_TAIL_DELTA:g}"
    return None


def decide(figures: Sequence[dict]) -> tuple[int, str]:
    """The index of the chosen candidate and its figures against the others (module docstring, 4). `figures` are in
    preference order, each with "label", "seconds" (median, None when it did not run), "error",
    and the fidelity fields of `fidelity` plus "held_to_bounds". InputError when none qualifies."""
    eligible, refused = [], []
    for index, figure in enumerate(figures):
        broken = figure.get("error") or keeps_bounds(figure) or (None if figure.get("seconds") else "not timed")
        if broken:
            refused.append(f"{figure['label']}: {broken}")
            continue
        eligible.append(index)
    if not eligible:
        raise InputError("--backend auto: no candidate ran within the fidelity bounds (" + "; ".join(refused)
                         + "); name a backend and precision with --backend and --precision")
    fastest = min(eligible, key=lambda i: figures[i]["seconds"])
    limit = figures[fastest]["seconds"] * (1 + PREFERENCE_MARGIN)
    chosen = next(i for i in eligible if figures[i]["seconds"] <= limit)
    best = figures[chosen]
    parts = [f"{best['seconds'] * 1000:.0f} ms per run"]
    reference = next((f for f in figures if f.get("reference")), None)
    if reference is not None and reference.get("seconds") and reference is not best:
        parts.append(f"{reference['seconds'] / best['seconds']:.2f}x {reference['label']}")
    if best.get("delta_sad") is not None and not best.get("reference"):
        parts.append(f"ΔSAD {100 * best['delta_sad']:.2f} %, tail |Δalpha| {best['tail_abs_delta']:.3f}")
    if chosen != fastest:
        parts.append(f"preferred to the {100 * (figures[chosen]['seconds'] / figures[fastest]['seconds'] - 1):.0f} % "
                     f"faster {figures[fastest]['label']} (margin {100 * PREFERENCE_MARGIN:g} %)")
    others = [f"{f['label']} {f['seconds'] * 1000:.0f} ms" for i, f in enumerate(figures)
              if i != chosen and i in eligible]
    reason = ", ".join(parts)
    if others:
        reason += "; also within bounds: " + ", ".join(others)
    if refused:
        reason += "; passed over: " + "; ".join(refused)
    return chosen, reason


def _open(graphs: Graphs, candidate: Candidate, cache: ArtifactCache | None, threads: int, batch: int | None):
    options = {"threads": threads} if "threads" in candidate.backend.options else {}
    variant = PrecisionFromGraphs(graphs, candidate.precision, cache=cache)
    artifacts = ArtifactsFromGraphs(variant, candidate.backend, device="cpu", precision=candidate.precision,
                                    cache=cache)
    engines = EnginesFromArtifacts(artifacts, candidate.backend, device="cpu", precision=candidate.precision,
                                   options=options)
    return PipelineFromEngines(engines, batch=batch)().__enter__()


def _rss() -> int:
    """This process's resident memory in bytes (0 where /proc is not there)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def _timed_runs(pipeline, image, figure: dict, rounds: int) -> None:
    for _ in range(rounds):
        started = time.perf_counter()
        pipeline.run(image)
        figure["runs"].append(round(time.perf_counter() - started, 5))
        if time.perf_counter() - started > BUDGET_SECONDS / ROUNDS:
            break


def measure(graphs: Graphs, candidates: Sequence[Candidate], *, held_to_bounds: bool, threads: int,
            batch: int | None, cache: ArtifactCache | None, log: Log) -> dict:
    """Run the candidates on the measurement image (module docstring, 1-3); the record.

    One candidate at a time opens and runs once (scored against the reference, which runs first);
    one outside the bounds is closed at once. Those within stay open for the interleaved rounds
    while what they hold, plus one more candidate as large as the largest so far, fits in half the
    memory available at the start (full-size aim: 2-3.7 GB per candidate at a 4-tile batch); the
    others are timed alone afterwards, one at a time, and their figure says so."""
    manifest = graphs.manifest
    tile_batch = batch or DEFAULT_TILE_BATCH
    overlap = min(int(manifest.tile_overlap), int(manifest.tile_size) - int(manifest.stride_multiple))
    size = measurement_size(int(manifest.tile_size), overlap, tile_batch)
    sample = generate_sample(IMAGE["kind"], size, sample_rng(IMAGE["seed"], IMAGE["index"]))
    figures = [{"label": c.label, "backend": c.backend.name, "precision": c.precision, "runs": [],
                "held_to_bounds": False, "reference": False} for c in candidates]
    # The reference: the first fp32 candidate that runs (fidelity and speed ratios); for an asked-for
    # precision, the first candidate that runs (ratios only).
    reference: int | None = None
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    available = available_memory()
    memory_budget = available // 2 if available else None
    held_memory = largest = 0
    pipelines: dict[int, Any] = {}  # kept open for the interleaved rounds
    alone: list[int] = []  # within the bounds, timed alone (memory)
    reference_alpha = None
    started = time.perf_counter()
    try:
        for index, candidate in enumerate(candidates):
            figure = figures[index]
            before = _rss()
            pipeline = None
            try:
                pipeline = _open(graphs, candidate, cache, threads, batch)
                alpha = pipeline.run(sample.image).alpha  # warm-up (OpenVINO compiles here); its alpha is scored
            except Exception as exc:  # noqa: BLE001 - recorded, shown, and never chosen
                figure["error"] = f"{type(exc).__name__}: {exc}"
                log(f"auto: {candidate.label} failed: {figure['error']}")
                if pipeline is not None:
                    pipeline.close()
                continue
            footprint = max(_rss() - before, 0)
            largest = max(largest, footprint)
            figure["memory_mib"] = round(footprint / 2**20)
            if reference is None and (candidate.precision == "fp32" or not held_to_bounds):
                reference, reference_alpha = index, alpha
                figure["reference"] = True
            elif held_to_bounds:
                figure["held_to_bounds"] = True
                figure.update(fidelity(alpha, reference_alpha, sample.alpha) if reference is not None else {})
                if keeps_bounds(figure):  # fidelity first: only candidates within the bounds are timed
                    pipeline.close()
                    continue
            if reference == index:
                figure.update(fidelity(alpha, alpha, sample.alpha) if held_to_bounds else {})
            # kept open while it and the next candidate (as large as the largest so far) fit the budget
            if memory_budget is None or held_memory + footprint + largest <= memory_budget or not pipelines:
                pipelines[index] = pipeline
                held_memory += footprint
            else:
                pipeline.close()
                alone.append(index)
        warmup_seconds = time.perf_counter() - started
        live = sorted(pipelines)
        for round_index in range(ROUNDS):
            round_started = time.perf_counter()
            for offset in range(len(live)):
                index = live[(round_index + offset) % len(live)]
                try:
                    _timed_runs(pipelines[index], sample.image, figures[index], 1)
                except Exception as exc:  # noqa: BLE001
                    figures[index]["error"] = f"{type(exc).__name__}: {exc}"
            if time.perf_counter() - round_started > BUDGET_SECONDS / ROUNDS:
                break
        for index in live:
            figures[index]["timing"] = "interleaved"
        while pipelines:  # their memory goes before the others are timed
            pipelines.popitem()[1].close()
        for index in alone:
            figure = figures[index]
            figure["timing"] = "alone: it did not fit in memory beside the others"
            pipeline = _open(graphs, candidates[index], cache, threads, batch)
            try:
                pipeline.run(sample.image)  # warm-up again (compiles)
                _timed_runs(pipeline, sample.image, figure, ROUNDS)
            except Exception as exc:  # noqa: BLE001
                figure["error"] = f"{type(exc).__name__}: {exc}"
            finally:
                pipeline.close()
    finally:
        for pipeline in pipelines.values():
            pipeline.close()
    for figure in figures:
        if figure["runs"] and "error" not in figure:
            figure["seconds"] = float(np.median(figure["runs"]))
    return {
        "image": {**IMAGE, "size": list(size), "tiles": tile_batch},
        "rounds": max((len(f["runs"]) for f in figures), default=0),
        "warmup_seconds": round(warmup_seconds, 3),
        "seconds": round(time.perf_counter() - started, 3),
        "load_average": [load_before, os.getloadavg()[0] if hasattr(os, "getloadavg") else None],
        "memory": {"available_mib_at_start": available // 2**20 if available else None,
                   "budget_mib": memory_budget // 2**20 if memory_budget else None},
        "bounds": {"delta_sad": MAX_DELTA_SAD, "tail_quantile": TAIL_QUANTILE, "tail_abs_delta": MAX_TAIL_DELTA,
                   "held": held_to_bounds},
        "figures": figures,
    }


def graph_digests(graphs: Graphs, candidates: Sequence[Candidate]) -> dict[str, dict[str, str]]:
    """stage -> graph file -> SHA-256 of every graph the candidates read."""
    digests: dict[str, dict[str, str]] = {}
    for entry in graphs.manifest.stages:
        names = {entry.files.get(graph_precision(c.precision)) for c in candidates}
        names |= {entry.file_for(c.precision, c.backend.name) for c in candidates if c.precision == "int8"}
        digests[entry.name] = {n: file_sha256(graphs.directory / n) for n in sorted(n for n in names if n)}
    return digests


class EnginesFromSelection(Step):
    """Selection -> the chosen candidate's stage engines (its precision variant and build through
    the cache, as deploy/plan.py chains them for an explicit backend), with the selection notes."""

    def __init__(self, selection: Selection | Step, *, cache: ArtifactCache | None,
                 options: dict[str, Any] | None = None):
        self.selection, self.cache, self.options = selection, cache, dict(options or {})

    def call_impl(self) -> Engines:
        chosen = produce(self.selection)
        backend, precision = chosen.candidate.backend, chosen.candidate.precision
        variant = PrecisionFromGraphs(chosen.graphs, precision, cache=self.cache)
        artifacts = ArtifactsFromGraphs(variant, backend, device="cpu", precision=precision, cache=self.cache)
        options = {k: v for k, v in self.options.items() if k in backend.options}
        made = EnginesFromArtifacts(artifacts, backend, device="cpu", precision=precision, options=options)()
        made.selection = {"backend": backend.name, "device": "cpu", "precision": precision, "reason": chosen.reason,
                          **({"measured": chosen.record} if chosen.record else {})}
        return made


class MeasuredChoice(Step):
    """Graphs -> Selection: the candidate `--backend auto` measured fastest within the bounds here,
    measured once into the artifact cache and reused (module docstring)."""

    def __init__(self, graphs: Graphs | Step, candidates: Sequence[Candidate], *, precision_given: bool,
                 cache: ArtifactCache, threads: int | None = None, batch: int | None = None, log: Log | None = print):
        self.graphs, self.candidates, self.precision_given = graphs, list(candidates), precision_given
        self.cache, self.threads, self.batch = cache, threads, batch
        self.log = log or (lambda message: None)

    def call_impl(self) -> Selection:
        graphs = produce(self.graphs)
        stages = graphs.manifest.stages
        candidates = [c for c in self.candidates if all(graph_precision(c.precision) in e.files for e in stages)]
        skipped = [c.label for c in self.candidates if c not in candidates]
        if not candidates:
            raise InputError(f"--backend auto: the graphs in {graphs.directory} hold none of the precisions asked for")
        threads = resolve_threads(self.threads)
        if len(candidates) == 1:
            return Selection(graphs, candidates[0], f"auto chose {candidates[0].label} on cpu (the only candidate "
                                                     "these graphs and this machine allow)")
        key = {"step": "backend-choice", "model": graphs.manifest.model,
               "graphs_sha256": graph_digests(graphs, candidates),
               "candidates": [[c.backend.name, c.precision, c.backend.identity("cpu")] for c in candidates],
               "machine": {**cpu_identity(), "cores": available_cores()}, "threads": threads,
               "batch": self.batch or DEFAULT_TILE_BATCH, "held_to_bounds": not self.precision_given,
               "bounds": [MAX_DELTA_SAD, TAIL_QUANTILE, MAX_TAIL_DELTA, PREFERENCE_MARGIN],
               "recipe": [RECIPE_VERSION, IMAGE, ROUNDS, BUDGET_SECONDS]}
        labels = ", ".join(c.label for c in candidates)

        def build(staging: Path) -> Path:
            self.log(f"auto: measuring {labels} on this machine, once for these graphs ({threads} threads; "
                     "later runs reuse the choice)")
            record = measure(graphs, candidates, held_to_bounds=not self.precision_given, threads=threads,
                             batch=self.batch, cache=self.cache, log=self.log)
            chosen, reason = decide(record["figures"])
            record.update(chosen=record["figures"][chosen]["label"], chosen_index=chosen, reason=reason,
                          not_measured=skipped, measured_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
            (staging / CHOICE_FILE).write_text(json.dumps(record, indent=2) + "\n")
            return staging

        entry = self.cache.entry(key, f"{graphs.manifest.model}-auto-cpu", build)
        record = json.loads((entry.path / CHOICE_FILE).read_text())
        chosen = candidates[record["chosen_index"]]
        how = (f"measured {record['measured_at']}, reused from {entry.root}" if entry.hit
               else f"measured now in {record['seconds']:.1f} s")
        reason = f"auto chose {chosen.label} on cpu ({how}): {record['reason']}"
        if skipped:
            reason += f"; not measured (the graphs hold no such variant; auto does not calibrate): {', '.join(skipped)}"
        self.log(f"backend: {chosen.backend.name} on cpu, {chosen.precision} ({reason})")
        return Selection(graphs, chosen, reason, {**record, "entry": entry.describe()})


__all__ = ["CHOICE_FILE", "Candidate", "EnginesFromSelection", "MAX_DELTA_SAD", "MAX_TAIL_DELTA", "MeasuredChoice",
           "PREFERENCE_MARGIN", "alpha_deltas",
           "Selection", "TAIL_QUANTILE", "decide", "fidelity", "graph_digests", "keeps_bounds", "measure",
           "measurement_size"]
