"""Does `mattrt infer` gain from finishing the previous image beside the matting of the next?

`mattrt infer` (jobs/infer.py) reads, mattes and finishes (foreground where asked, PNG encode,
write) one image after another; with `InferOptions.overlap_io` (the default) one helper thread
finishes image i-1 while image i is read and matted on the main thread (PNG encoding and Pillow
release the GIL, so the helper can run beside the engines). This measures `run_inference` itself
with overlap_io off ("sequential") and on ("overlapped"):

- images: synthetic salient_opaque PNGs (data.synthetic, seed 7) at each size asked for, several
  per size (different samples), written once to a temporary folder;
- one pipeline (one backend/precision), opened once and kept open across the runs; every image
  matted once first (OpenVINO compiles each batch size on first use: tails differ per size);
- rounds alternate the variants (S O, then O S, ...); per round the wall time of run_inference over
  all images of a size; from the sequential run's records the seconds per image of reading, matting
  and finishing (foreground + write), so the most the overlap could save is visible.

Writes benchmarks/results/host-overlap-<date>.json.

    python benchmarks/host_overlap.py [--sizes 1920x1080 3840x2160] [--count 3] [--rounds 4]
        [--backend openvino --precision bf16] [--output alpha|rgba] [--threads N] [--cache-dir DIR]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from mattrt.data.synthetic import generate_sample, parse_size, sample_rng
from mattrt.deploy.plan import DeploymentRequest, open_pipeline
from mattrt.imageio import read_image
from mattrt.imagewrite import write_rgb
from mattrt.jobs.bench.report import hardware, versions
from mattrt.jobs.infer import InferOptions, run_inference
from mattrt.machine import cpu_flags

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
FINISH = ("foreground", "write")


class KeptOpen:
    """The pipeline with `with` made a no-op: run_inference enters and leaves it per call, which
    would deactivate the engines (OpenVINO would compile again) between the measured runs."""

    def __init__(self, pipeline):
        self.pipeline = pipeline

    def __getattr__(self, name):
        return getattr(self.pipeline, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


def infer(pipeline, files: list[Path], out: Path, output: str, overlap: bool) -> dict:
    options = InferOptions(output=output, overwrite=True, progress=False, overlap_io=overlap)
    started = time.perf_counter()
    summary = run_inference(pipeline, [str(f) for f in files], out, options, summary_path=out / "summary.json",
                            log=lambda message: None)
    wall = time.perf_counter() - started
    assert summary["processed"] == len(files) and not summary["failed"], summary["failures"]
    timings = [r["timings"] for r in summary["images"]]
    return {"wall_s": wall, "read_s": [t["read"] for t in timings],
            "matting_s": [sum(v for k, v in t.items() if k not in ("read", "total", *FINISH)) for t in timings],
            "finish_s": [sum(t.get(k, 0.0) for k in FINISH) for t in timings]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="aim_synthetic")
    parser.add_argument("--backend", default="openvino")
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--output", default="alpha", choices=("alpha", "rgba"))
    parser.add_argument("--sizes", nargs="+", default=["1920x1080", "3840x2160"])
    parser.add_argument("--count", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--cache-dir", type=Path, default=None, help="artifact cache (default: mattrt's)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    record = {"benchmark": "host_overlap", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
        timespec="seconds"), "arguments": {k: str(v) for k, v in vars(args).items()}, "hardware": hardware(),
        "cpu_flags": cpu_flags(), "versions": versions(), "sizes": {}}
    request = DeploymentRequest(model=args.model, backend=args.backend, precision=args.precision,
                                backend_options={"threads": args.threads}, cache_dir=args.cache_dir)
    with tempfile.TemporaryDirectory(prefix="mattrt-overlap-") as folder, open_pipeline(request, log=None) as opened:
        folder, pipeline = Path(folder), KeptOpen(opened)
        for size_text in args.sizes:
            size = parse_size(size_text)
            files = []
            for index in range(args.count):
                sample = generate_sample("salient_opaque", size, sample_rng(7, index))
                files.append(write_rgb(folder / f"{size_text}-{index}.png", sample.image))
            for path in files:  # warm-up: OpenVINO compiles each batch size on first use (tails differ)
                opened.run(read_image(path).rgb)
            rounds = []
            for index in range(args.rounds):
                order = ("sequential", "overlapped") if index % 2 == 0 else ("overlapped", "sequential")
                entry = {"order": order, "load_before": os.getloadavg()[0]}
                for kind in order:
                    entry[kind] = infer(pipeline, files, folder / f"out-{size_text}-{kind}", args.output,
                                        overlap=kind == "overlapped")
                entry["load_after"] = os.getloadavg()[0]
                rounds.append(entry)
                print(f"{size_text} round {index}: sequential {entry['sequential']['wall_s']:.2f} s, overlapped "
                      f"{entry['overlapped']['wall_s']:.2f} s (load {entry['load_before']:.2f} -> "
                      f"{entry['load_after']:.2f})", flush=True)
            seq = [r["sequential"] for r in rounds]
            summary = {
                "images": len(files),
                "sequential_wall_median_s": statistics.median(r["wall_s"] for r in seq),
                "overlapped_wall_median_s": statistics.median(r["overlapped"]["wall_s"] for r in rounds),
                "read_median_s": statistics.median(v for r in seq for v in r["read_s"]),
                "matting_median_s": statistics.median(v for r in seq for v in r["matting_s"]),
                "finish_median_s": statistics.median(v for r in seq for v in r["finish_s"]),
                "per_round_saving": [1 - r["overlapped"]["wall_s"] / r["sequential"]["wall_s"] for r in rounds],
            }
            summary["saving"] = 1 - summary["overlapped_wall_median_s"] / summary["sequential_wall_median_s"]
            summary["largest_possible_saving"] = summary["finish_median_s"] / (
                summary["read_median_s"] + summary["matting_median_s"] + summary["finish_median_s"])
            record["sizes"][size_text] = {"summary": summary, "rounds": rounds}
            print(json.dumps({size_text: summary}), flush=True)
    out_file = args.out or RESULTS / f"host-overlap-{datetime.date.today().isoformat()}.json"
    out_file.write_text(json.dumps(record, indent=1, default=str) + "\n")
    print(f"wrote {out_file}")


if __name__ == "__main__":
    main()
