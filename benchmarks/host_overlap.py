"""Would `mattrt infer` gain from overlapping host work with inference? Measured before building it.

`mattrt infer` handles one image at a time: decode the file, matte it, encode and write the PNG.
The alternative measured here keeps the matting on the main thread and moves the file work to one
helper thread: while image i mattes, image i+1 is decoded and image i-1's PNG is encoded and
written (Pillow's decoders and zlib release the GIL, so the helper can run beside the engines).

- images: synthetic salient_opaque PNGs (data.synthetic, seed 7) at each size asked for, several
  per size (different samples), written once to a temporary folder;
- variants: "sequential" (what `mattrt infer` does) and "overlapped" (the helper thread), the
  same pipeline (one backend/precision, opened once), alternating per round (S O, then O S, ...);
- per round: the wall time over all images of a size; per image in the sequential variant the
  seconds of read, matting and write, so the most overlap could save is visible.

Writes benchmarks/results/host-overlap-<date>.json.

    python benchmarks/host_overlap.py [--sizes 1920x1080 3840x2160] [--count 4] [--rounds 3]
        [--backend openvino --precision fp32] [--threads N]
"""

from __future__ import annotations

import argparse
import concurrent.futures
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
from mattrt.imagewrite import write_alpha, write_rgb
from mattrt.jobs.bench.report import hardware, versions
from mattrt.machine import cpu_flags

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def sequential(pipeline, files: list[Path], out: Path) -> dict:
    steps = {"read": [], "matting": [], "write": []}
    started = time.perf_counter()
    for path in files:
        t0 = time.perf_counter()
        rgb = read_image(path).rgb
        t1 = time.perf_counter()
        alpha = pipeline.run(rgb).alpha
        t2 = time.perf_counter()
        write_alpha(out / f"{path.stem}_alpha.png", alpha, bit_depth=8, overwrite=True)
        t3 = time.perf_counter()
        steps["read"].append(t1 - t0)
        steps["matting"].append(t2 - t1)
        steps["write"].append(t3 - t2)
    return {"wall_s": time.perf_counter() - started, **{f"{k}_s": v for k, v in steps.items()}}


def overlapped(pipeline, files: list[Path], out: Path) -> dict:
    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as helper:
        pending_read = helper.submit(lambda p=files[0]: read_image(p).rgb)
        writes = []
        for index, path in enumerate(files):
            rgb = pending_read.result()
            if index + 1 < len(files):
                pending_read = helper.submit(lambda p=files[index + 1]: read_image(p).rgb)
            alpha = pipeline.run(rgb).alpha
            writes.append(helper.submit(write_alpha, out / f"{path.stem}_alpha.png", alpha, bit_depth=8,
                                        overwrite=True))
        for write in writes:
            write.result()
    return {"wall_s": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="aim_synthetic")
    parser.add_argument("--backend", default="openvino")
    parser.add_argument("--precision", default="fp32")
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
    with tempfile.TemporaryDirectory(prefix="mattrt-overlap-") as folder, open_pipeline(request, log=None) as pipeline:
        folder = Path(folder)
        for size_text in args.sizes:
            size = parse_size(size_text)
            files = []
            for index in range(args.count):
                sample = generate_sample("salient_opaque", size, sample_rng(7, index))
                files.append(write_rgb(folder / f"{size_text}-{index}.png", sample.image))
            out = folder / f"out-{size_text}"
            out.mkdir()
            for path in files:  # warm-up: OpenVINO compiles each batch size on first use (tails differ)
                pipeline.run(read_image(path).rgb)
            rounds = []
            for index in range(args.rounds):
                order = ("sequential", "overlapped") if index % 2 == 0 else ("overlapped", "sequential")
                entry = {"order": order, "load_before": os.getloadavg()[0]}
                for kind in order:
                    entry[kind] = (sequential if kind == "sequential" else overlapped)(pipeline, files, out)
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
                "write_median_s": statistics.median(v for r in seq for v in r["write_s"]),
            }
            summary["saving"] = 1 - summary["overlapped_wall_median_s"] / summary["sequential_wall_median_s"]
            summary["largest_possible_saving"] = ((summary["read_median_s"] + summary["write_median_s"])
                                                  / (summary["read_median_s"] + summary["matting_median_s"]
                                                     + summary["write_median_s"]))
            record["sizes"][size_text] = {"summary": summary, "rounds": rounds}
            print(json.dumps({size_text: summary}), flush=True)
    out_file = args.out or RESULTS / f"host-overlap-{datetime.date.today().isoformat()}.json"
    out_file.write_text(json.dumps(record, indent=1, default=str) + "\n")
    print(f"wrote {out_file}")


if __name__ == "__main__":
    main()
