"""Does the pipeline cost anything around the engine? Per-call detail time inside the pipeline
against a bare call on the same session (or compiled model), the same feeds and batch, interleaved.

Issue 19 reported onnxruntime at ~100 ms per 4-tile batch inside the pipeline against ~70 ms for a
bare session (a 4K profile: 8.46 s of 9.34 s in session.run, 85 calls): "the pipeline loses ~30 %
around the engine". The research for the openvino backend (benchmarks/results/openvino-research-2026-12-07.md, section 7) could not reproduce
it: interleaved on a quiet machine both were ~61 ms. This script measures it for any backend:

- opens `Pipeline`s through the deployment chain (model aim_synthetic from the artifact cache by
  default), one per backend/precision asked for, on one synthetic 4K image (data.synthetic
  salient_opaque, seed 7: bench's image);
- wraps the detail engine so each call inside the pipeline records the library's call alone
  (`_infer`: onnxruntime's session.run, OpenVINO's InferRequest.infer) and the whole Engine.run
  (its feed checks included), and keeps a copy of every feed;
- replays those feeds through the same engine object's library call ("bare": no pipeline work
  between calls), in the same order;
- rounds alternate pipeline and bare (P B, then B P, ...), so load drift hits both alike; the
  load average is recorded before and after every round.

Per variant it reports the median per-call ms of each kind, the ratio inside / bare (the issue's
target: <= 1.1), the pipeline's total and its detail share. Writes
benchmarks/results/engine-overhead-<date>.json.

    python benchmarks/engine_overhead.py [--model aim_synthetic] [--variants onnxruntime:fp32 openvino:fp32]
        [--size 3840x2160] [--rounds 3] [--threads N]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import time
from pathlib import Path

from mattrt.data.synthetic import generate_sample, parse_size, sample_rng
from mattrt.deploy.plan import DeploymentRequest, open_pipeline
from mattrt.jobs.bench.report import hardware, versions
from mattrt.machine import cpu_flags

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


class Recorder:
    """Wraps a detail engine: times its library call and its Engine.run inside the pipeline, keeps feeds."""

    def __init__(self, engine):
        self.engine = engine
        self.library_call = engine._infer  # the bound method of the engine's class
        self.engine_run = engine.run
        self.feeds: list[tuple[dict, int]] = []
        self.inside: list[float] = []
        self.inside_run: list[float] = []
        self.keep = True
        engine._infer = self._infer
        engine.run = self._run

    def _infer(self, feeds, batch):
        started = time.perf_counter()
        out = self.library_call(feeds, batch)
        self.inside.append(time.perf_counter() - started)
        if self.keep:
            self.feeds.append(({k: v.copy() for k, v in feeds.items()}, batch))
        return out

    def _run(self, feeds):
        started = time.perf_counter()
        out = self.engine_run(feeds)
        self.inside_run.append(time.perf_counter() - started)
        return out

    def bare(self) -> list[float]:
        seconds = []
        for feeds, batch in self.feeds:
            started = time.perf_counter()
            self.library_call(feeds, batch)
            seconds.append(time.perf_counter() - started)
        return seconds


def load() -> float:
    return os.getloadavg()[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="aim_synthetic")
    parser.add_argument("--variants", nargs="+", default=["onnxruntime:fp32", "openvino:fp32"])
    parser.add_argument("--size", default="3840x2160")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--cache-dir", type=Path, default=None, help="artifact cache (default: mattrt's)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    sample = generate_sample("salient_opaque", parse_size(args.size), sample_rng(7, 0))
    record = {"benchmark": "engine_overhead", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
        timespec="seconds"), "command": "python benchmarks/engine_overhead.py " + " ".join(
        f"--{k.replace('_', '-')} {' '.join(v) if isinstance(v, list) else v}" for k, v in vars(args).items() if v is not None
        and k != "out"), "hardware": hardware(), "cpu_flags": cpu_flags(), "versions": versions(),
        "image": {"kind": "salient_opaque", "seed": 7, "size": args.size}, "variants": {}}
    for variant in args.variants:
        backend, precision = variant.split(":")
        request = DeploymentRequest(model=args.model, backend=backend, precision=precision,
                                    backend_options={"threads": args.threads}, cache_dir=args.cache_dir)
        with open_pipeline(request, log=None) as pipeline:
            recorder = Recorder(pipeline.engines["detail"])
            pipeline.run(sample.image)  # warm-up: compiles, arenas, feeds recorded
            recorder.keep = False
            rounds = []
            for index in range(args.rounds):
                order = ("pipeline", "bare") if index % 2 == 0 else ("bare", "pipeline")
                entry = {"order": order, "load_before": load()}
                for kind in order:
                    if kind == "pipeline":
                        recorder.inside.clear()
                        recorder.inside_run.clear()
                        started = time.perf_counter()
                        result = pipeline.run(sample.image)
                        entry["pipeline_total_s"] = time.perf_counter() - started
                        entry["pipeline_detail_s"] = result.timings.get("detail")
                        entry["inside_ms"] = [1000 * s for s in recorder.inside]
                        entry["inside_run_ms"] = [1000 * s for s in recorder.inside_run]
                    else:
                        entry["bare_ms"] = [1000 * s for s in recorder.bare()]
                entry["load_after"] = load()
                rounds.append(entry)
                print(f"{variant} round {index}: inside {statistics.median(entry['inside_ms']):.1f} ms, "
                      f"bare {statistics.median(entry['bare_ms']):.1f} ms, total {entry['pipeline_total_s']:.2f} s "
                      f"(load {entry['load_before']:.2f} -> {entry['load_after']:.2f})", flush=True)
            inside = [v for r in rounds for v in r["inside_ms"]]
            inside_run = [v for r in rounds for v in r["inside_run_ms"]]
            bare = [v for r in rounds for v in r["bare_ms"]]
            summary = {
                "calls_per_image": len(recorder.feeds),
                "batch_shapes": sorted({tuple(next(iter(f.values())).shape) for f, _ in recorder.feeds}),
                "inside_median_ms": statistics.median(inside),
                "inside_engine_run_median_ms": statistics.median(inside_run),
                "bare_median_ms": statistics.median(bare),
                "ratio_inside_over_bare": statistics.median(inside) / statistics.median(bare),
                "ratio_engine_run_over_bare": statistics.median(inside_run) / statistics.median(bare),
                "per_round_ratio": [statistics.median(r["inside_ms"]) / statistics.median(r["bare_ms"]) for r in rounds],
                "pipeline_total_median_s": statistics.median(r["pipeline_total_s"] for r in rounds),
                "pipeline_detail_median_s": statistics.median(r["pipeline_detail_s"] for r in rounds),
                "describe": {k: v for k, v in pipeline.describe().items() if k in ("backend", "precision", "batch",
                                                                                    "tile_size", "threads")},
            }
            record["variants"][variant] = {"summary": summary, "rounds": rounds}
            print(json.dumps({variant: {k: v for k, v in summary.items() if k != "describe"}}, default=str), flush=True)
    out = args.out or RESULTS / f"engine-overhead-{datetime.date.today().isoformat()}.json"
    out.write_text(json.dumps(record, indent=1, default=str) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
