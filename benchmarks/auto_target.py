"""Issue 19's target: 4K end to end in-process, today's default (onnxruntime FP32) against what
`--backend auto` picks on this machine, with the pick's ΔSAD.

- "default": `DeploymentRequest(model=..., backend="onnxruntime", precision="fp32")`, what `mattrt
  infer --model NAME` ran before the openvino backend;
- "auto": `DeploymentRequest(model=...)` with no backend and no precision, what `mattrt infer
  --model NAME` runs now: on the first use of the graphs on this machine it measures its candidates
  (deploy/selection.py), later it reuses the choice; the choice record is saved with the figures;
- image: bench's 4K image (data.synthetic salient_opaque, seed 7, sample 0) with exact alpha, as a
  PNG; one run = decode the PNG, matte, encode the 16-bit alpha PNG (as `mattrt bench` counts
  end to end), interleaved (D A, then A D, ...) after one warm-up run each;
- ΔSAD = 100 (SAD_auto - SAD_default) / SAD_default against the exact alpha; max and 99.9th-
  percentile |Δalpha| between the two alphas.

Writes benchmarks/results/auto-target-<date>.json.

    python benchmarks/auto_target.py [--model aim_synthetic] [--size 3840x2160] [--rounds 5] [--cache-dir DIR]
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
from mattrt.deploy.selection import alpha_deltas
from mattrt.imageio import decode_image
from mattrt.imagewrite import write_alpha, write_rgb
from mattrt.jobs.bench.report import hardware, versions
from mattrt.machine import cpu_flags
from mattrt.metrics import sad

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def end_to_end(pipeline, png: bytes, scratch: Path):
    started = time.perf_counter()
    rgb = decode_image(png, name="image.png").rgb
    alpha = pipeline.run(rgb).alpha
    write_alpha(scratch / "alpha.png", alpha, bit_depth=16, overwrite=True)
    return time.perf_counter() - started, alpha


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="aim_synthetic")
    parser.add_argument("--size", default="3840x2160")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    sample = generate_sample("salient_opaque", parse_size(args.size), sample_rng(7, 0))
    messages: list[str] = []
    requests = {
        "default": DeploymentRequest(model=args.model, backend="onnxruntime", precision="fp32",
                                     backend_options={"threads": args.threads}, cache_dir=args.cache_dir),
        "auto": DeploymentRequest(model=args.model, backend_options={"threads": args.threads}, cache_dir=args.cache_dir),
    }
    record = {"benchmark": "auto_target", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
        timespec="seconds"), "arguments": {k: str(v) for k, v in vars(args).items()}, "hardware": hardware(),
        "cpu_flags": cpu_flags(), "versions": versions(), "image": {"kind": "salient_opaque", "seed": 7,
                                                                    "size": args.size}}
    with tempfile.TemporaryDirectory(prefix="mattrt-auto-") as folder:
        scratch = Path(folder)
        png = write_rgb(scratch / "image.png", sample.image).read_bytes()
        opened = {}
        for name, request in requests.items():
            started = time.perf_counter()
            opened[name] = open_pipeline(request, log=messages.append).__enter__()
            record[f"{name}_open_s"] = time.perf_counter() - started
        try:
            record["auto_selection"] = opened["auto"].describe().get("selection")
            alphas, times = {}, {name: [] for name in opened}
            for name, pipeline in opened.items():  # warm-up
                _, alphas[name] = end_to_end(pipeline, png, scratch)
            loads = []
            for index in range(args.rounds):
                order = list(opened) if index % 2 == 0 else list(opened)[::-1]
                loads.append(os.getloadavg()[0])
                for name in order:
                    seconds, _ = end_to_end(opened[name], png, scratch)
                    times[name].append(seconds)
                print(f"round {index}: " + ", ".join(f"{n} {times[n][-1]:.2f} s" for n in opened), flush=True)
        finally:
            for pipeline in opened.values():
                pipeline.close()
    sads = {name: sad(alpha, sample.alpha) for name, alpha in alphas.items()}
    medians = {name: statistics.median(values) for name, values in times.items()}
    chosen = record["auto_selection"] or {}
    record.update({
        "times_s": times, "median_s": medians, "load_average_per_round": loads,
        "speedup_auto_over_default": medians["default"] / medians["auto"],
        "auto_pick": f"{chosen.get('backend')} {chosen.get('precision')}",
        "sad": sads, "delta_sad_pct": 100 * (sads["auto"] - sads["default"]) / sads["default"],
        **{f"{k}_alpha": v for k, v in alpha_deltas(alphas["auto"], alphas["default"]).items()},
        "log": messages,
    })
    print(json.dumps({k: record[k] for k in ("auto_pick", "median_s", "speedup_auto_over_default", "delta_sad_pct",
                                             "max_abs_delta_alpha", "tail_abs_delta_alpha")}, indent=1))
    out = args.out or RESULTS / f"auto-target-{datetime.date.today().isoformat()}.json"
    out.write_text(json.dumps(record, indent=1, default=str) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
