"""`mattrt batch` against `mattrt infer` on the same 20 1080p images, on this machine.

Three configurations, each a fresh `python -m mattrt.cli` process over the same images into an
empty output folder, interleaved round by round (the order rotates) so drift in a shared
machine's load spreads over all of them:

    infer            mattrt infer  --threads T                         one process, T threads
    batch-1x{T}      mattrt batch  --workers 1 --cpus-per-worker T --threads T      one actor
    batch-{T}x1      mattrt batch  --workers T --cpus-per-worker 1 --threads 1      T actors

(T = the cores this process may use). Model `aim_synthetic`, onnxruntime on the CPU, FP32, the
artifact cache warmed before the first timed run (`--cache-dir`, default a folder of the run).
Per run: the wall time of the whole command (start-up included: Ray, the per-node probe, the
actors), and the matting span (first image started to last image finished, from infer's
summary or batch's manifest) with images/s over it; the 1-minute load average before and after.
Outputs are compared byte for byte with infer's of the same round.

The run waits (up to --max-wait seconds) for the 1-minute load average to fall under
--max-load; if it never does, it runs anyway and says so in the results.

    python benchmarks/batch.py [--rounds 2] [--images 20] [--max-load 1.5] [--max-wait 1800]

Writes benchmarks/results/batch-cpu-<date>.json and .md.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
MODEL = ["--model", "aim_synthetic", "--backend", "onnxruntime", "--precision", "fp32", "--no-progress"]
FLAGS_OF_INTEREST = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile")


def load_average() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def lscpu() -> dict:
    text = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    flags = fields.get("Flags", "").split()
    return {"model": fields.get("Model name"), "cpus": fields.get("CPU(s)"), "threads_per_core":
            fields.get("Thread(s) per core"), "flags": [f for f in FLAGS_OF_INTEREST if f in flags]}


def versions() -> dict:
    found = {"python": platform.python_version()}
    for dist in ("torch", "onnxruntime", "ray", "pyarrow", "numpy", "pillow"):
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            found[dist] = None
    revision = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    found["mattrt_git"] = revision.stdout.strip() + ("+dirty" if dirty else "")
    return found


def make_images(folder: Path, count: int) -> list[Path]:
    from PIL import Image

    from mattrt.export.parity import generated_image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        path = folder / f"frame_{index:03d}.png"
        if not path.exists():
            Image.fromarray(generated_image(1920, 100 + index)[:1080]).save(path)
        paths.append(path)
    return paths


def environment(threads: int) -> dict:
    # Thread counts on purpose: mattrt sets its own from --threads; OpenMP/MKL pools are pinned so
    # that no library starts one thread per core on top.
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
            "OMP_WAIT_POLICY": "PASSIVE"}


def configurations(threads: int) -> dict[str, tuple[list[str], int]]:
    return {
        "infer": (["infer", "--threads", str(threads)], threads),
        f"batch-1x{threads}": (["batch", "--workers", "1", "--cpus-per-worker", str(threads), "--threads",
                                str(threads)], threads),
        f"batch-{threads}x1": (["batch", "--workers", str(threads), "--cpus-per-worker", "1", "--threads", "1"], 1),
    }


def span_seconds(name: str, out: Path) -> tuple[float, int]:
    """(first image started -> last image finished, images) for one run."""
    if name == "infer":
        summary = json.loads((out / "summary.json").read_text())
        return summary["seconds"], summary["processed"]
    import pyarrow.parquet as pq

    rows = [r for r in pq.read_table(out / "manifest.parquet").to_pylist() if r["status"] == "done"]
    ends = [r["finished_at"].timestamp() for r in rows]
    starts = [end - r["seconds"] for end, r in zip(ends, rows)]
    return max(ends) - min(starts), len(rows)


def run_once(name: str, args: list[str], env_threads: int, images: list[Path], out: Path, cache: Path) -> dict:
    command = [sys.executable, "-m", "mattrt.cli", args[0], *map(str, images), "--out", str(out), *args[1:], *MODEL,
               "--cache-dir", str(cache)]
    before = load_average()
    started = time.perf_counter()
    result = subprocess.run(command, env=environment(env_threads), capture_output=True, text=True)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"{name} failed ({result.returncode}): {result.stderr[-3000:]}")
    span, processed = span_seconds(name, out)
    return {"config": name, "wall_s": round(wall, 3), "span_s": round(span, 3), "images": processed,
            "images_per_s_span": round(processed / span, 4), "images_per_s_wall": round(processed / wall, 4),
            "load_before": before, "load_after": load_average()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--max-load", type=float, default=1.5)
    parser.add_argument("--max-wait", type=float, default=1800, help="seconds to wait for the load to fall")
    parser.add_argument("--work", type=Path, help="folder for images, outputs and the cache (default: a temp folder)")
    parser.add_argument("--cache-dir", type=Path, help="artifact cache (default: WORK/cache)")
    parser.add_argument("--name", default=f"batch-cpu-{datetime.date.today().isoformat()}")
    args = parser.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="mattrt-batch-bench-"))
    cache = args.cache_dir or work / "cache"
    images = make_images(work / "images", args.images)
    configs = configurations(args.threads)

    waited_from, load_ok = time.monotonic(), load_average() < args.max_load
    while not load_ok and time.monotonic() - waited_from < args.max_wait:
        time.sleep(30)
        load_ok = load_average() < args.max_load
    waited = round(time.monotonic() - waited_from, 1)
    print(f"load average {load_average()} ({'under' if load_ok else 'NOT under'} {args.max_load} after waiting "
          f"{waited} s)", file=sys.stderr)

    # Warm the artifact cache (the ONNX export) outside the timed runs.
    warm = work / "warm"
    run_once("infer", configs["infer"][0], args.threads, images[:1], warm, cache)
    shutil.rmtree(warm)

    runs, equal = [], []
    names = list(configs)
    started_at = datetime.datetime.now(datetime.timezone.utc)
    for round_index in range(args.rounds):
        order = names[round_index % len(names):] + names[:round_index % len(names)]
        outs = {}
        for name in order:
            out = work / f"out-{round_index}-{name}"
            record = run_once(name, configs[name][0], configs[name][1], images, out, cache)
            record["round"] = round_index
            runs.append(record)
            outs[name] = out
            print(json.dumps(record), file=sys.stderr)
        for name in names[1:]:
            same = all((outs[name] / f"{p.stem}_alpha.png").read_bytes() == (outs["infer"] / f"{p.stem}_alpha.png")
                       .read_bytes() for p in images)
            equal.append({"round": round_index, "config": name, "outputs_equal_infer": same})
        for out in outs.values():
            shutil.rmtree(out)

    summary = {}
    for name in names:
        mine = [r for r in runs if r["config"] == name]
        summary[name] = {k: round(statistics.median(r[k] for r in mine), 4)
                         for k in ("wall_s", "span_s", "images_per_s_span", "images_per_s_wall")}
    base = summary["infer"]
    for name in names[1:]:
        summary[name]["span_throughput_vs_infer"] = round(summary[name]["images_per_s_span"] / base["images_per_s_span"], 3)
        summary[name]["wall_throughput_vs_infer"] = round(summary[name]["images_per_s_wall"] / base["images_per_s_wall"], 3)
    result = {
        "name": args.name,
        "date": started_at.isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "machine": {"platform": platform.platform(), "cpu": lscpu(), "affinity": len(os.sched_getaffinity(0)),
                    "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)},
        "versions": versions(),
        "load": {"max_load": args.max_load, "under_max_load_at_start": load_ok, "waited_s": waited,
                 "min_seen": min(min(r["load_before"], r["load_after"]) for r in runs),
                 "max_seen": max(max(r["load_before"], r["load_after"]) for r in runs)},
        "setup": {"images": len(images), "size": "1920x1080", "model": "aim_synthetic", "backend": "onnxruntime",
                  "precision": "fp32", "threads": args.threads, "rounds": args.rounds,
                  "configs": {name: " ".join(config[0]) for name, config in configs.items()},
                  "env": {"OMP_NUM_THREADS": "per config (threads of one worker)", "OMP_WAIT_POLICY": "PASSIVE"}},
        "summary_median": summary,
        "outputs": equal,
        "runs": runs,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(result, indent=1) + "\n")
    (RESULTS / f"{args.name}.md").write_text(markdown(result))
    print(markdown(result))
    if not args.work:
        shutil.rmtree(work)
    return 0


def markdown(result: dict) -> str:
    load = result["load"]
    lines = [f"# {result['name']}", "",
             f"{result['date']}, git {result['versions']['mattrt_git']}, {result['machine']['cpu']['model']} "
             f"({result['machine']['affinity']} cores usable, flags: {', '.join(result['machine']['cpu']['flags'])}), "
             f"{result['machine']['memory_gib']} GiB; Python {result['versions']['python']}, onnxruntime "
             f"{result['versions']['onnxruntime']}, ray {result['versions']['ray']}, torch {result['versions']['torch']}.",
             "", f"Load average (1 min): {load['min_seen']}-{load['max_seen']} during the runs; "
             + ("under" if load["under_max_load_at_start"] else "**not** under")
             + f" {load['max_load']} at the start (waited {load['waited_s']} s).", "",
             f"{result['setup']['images']} images {result['setup']['size']}, {result['setup']['model']}, "
             f"{result['setup']['backend']} {result['setup']['precision']}, {result['setup']['rounds']} interleaved "
             "rounds, medians:", "",
             "| config | command | wall s | matting span s | images/s (span) | images/s (wall) | vs infer (span) | "
             "vs infer (wall) |", "|---|---|---|---|---|---|---|---|"]
    for name, row in result["summary_median"].items():
        lines.append(f"| {name} | `{result['setup']['configs'][name]}` | {row['wall_s']} | {row['span_s']} | "
                     f"{row['images_per_s_span']} | {row['images_per_s_wall']} | "
                     f"{row.get('span_throughput_vs_infer', 1.0)} | {row.get('wall_throughput_vs_infer', 1.0)} |")
    lines += ["", "Outputs equal to infer's, byte for byte: "
              + ", ".join(f"{e['config']} round {e['round']}: {e['outputs_equal_infer']}" for e in result["outputs"]), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
