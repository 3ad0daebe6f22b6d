"""Thread defaults under contention: does `--threads` default (the cores this process may use)
collapse when other processes keep the cores busy?

For torch and onnxruntime, `aim_synthetic`'s detail stage at its tile size, 192 x 192 (its trained weights), in
fresh processes (OpenMP reads its wait policy when torch loads):
- threads = 1, and threads = the default (runtime/threads.py: available cores);
- torch with OMP_WAIT_POLICY=PASSIVE (mattrt's default) and with the library's own (spinning) policy;
- quiet, and busy: as many busy-loop processes as cores, started before and stopped after.
Each cell is the median of several calls after a warm-up. Variants alternate so that drift in
the machine's load spreads over all of them. Writes benchmarks/results/threads-<date>.json.

    python benchmarks/threads.py [--repeats 5] [--rounds 2]
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

WORKER = r"""
import json, os, sys, time
import numpy as np
backend, threads, repeats, graph = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
from mattrt.models import create_model
from mattrt.runtime import threads as thread_settings
model = create_model("aim_synthetic")
stage = model.stages()["detail"]
rng = np.random.default_rng(0)
size = stage.spatial_size
feeds = {t.name: rng.standard_normal((1, t.channels, size, size)).astype(np.float32) for t in stage.inputs}
if backend == "torch":
    import torch
    thread_settings.configure_torch(threads)
    tensors = [torch.from_numpy(feeds[t.name]) for t in stage.inputs]
    def call():
        with torch.inference_mode():
            stage.module(*tensors)
else:
    import onnxruntime as ort
    options = ort.SessionOptions()
    thread_settings.configure_onnxruntime(options, threads)
    session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
    def call():
        session.run(None, feeds)
call()
seconds = []
for _ in range(repeats):
    started = time.perf_counter(); call(); seconds.append(time.perf_counter() - started)
print(json.dumps({"seconds": seconds}))
"""


def _busy(stop) -> None:
    while not stop.is_set():
        sum(i * i for i in range(10000))


def _run(backend: str, threads: int, repeats: int, policy: str | None, graph: str) -> float:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("OMP_WAIT_POLICY", None)
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    out = subprocess.run([sys.executable, "-c", WORKER, backend, str(threads), str(repeats), graph], env=env,
                         capture_output=True, text=True, check=True, timeout=1800).stdout
    return statistics.median(json.loads(out.strip().splitlines()[-1])["seconds"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds over all variants")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from mattrt.deploy.cache import ArtifactCache
    from mattrt.engines.backends import get_backend
    from mattrt.runtime.threads import available_cores

    cores = available_cores()
    # The graph's tiles are fixed: both workers run the model's own tile (aim_synthetic: 192 x 192).
    entry = ArtifactCache(log=print).model_artifacts("aim_synthetic", get_backend("onnxruntime"), device="cpu",
                                                     precision="fp32")
    from mattrt.manifest import Manifest

    graph = str(entry.path / Manifest.load(entry.path).stage("detail").files["fp32"])
    variants = [("torch", 1, "PASSIVE"), ("torch", cores, "PASSIVE"), ("torch", cores, None),
                ("onnxruntime", 1, None), ("onnxruntime", cores, None)]
    cells: dict[str, list[float]] = {}
    for round_index in range(args.rounds):
        for load in ("quiet", "busy"):
            stop = multiprocessing.Event()
            hogs = [multiprocessing.Process(target=_busy, args=(stop,)) for _ in range(cores if load == "busy" else 0)]
            for hog in hogs:
                hog.start()
            try:
                for backend, threads, policy in variants:
                    label = f"{backend} threads={threads} wait={policy or 'library default'} {load}"
                    seconds = _run(backend, threads, args.repeats, policy, graph)
                    cells.setdefault(label, []).append(seconds)
                    print(f"round {round_index + 1}: {label}: {seconds * 1000:.0f} ms (load {os.getloadavg()[0]:.1f})",
                          flush=True)
            finally:
                stop.set()
                for hog in hogs:
                    hog.join()
    medians = {label: statistics.median(values) for label, values in cells.items()}

    def ratio(a: str, b: str) -> float:
        return round(medians[a] / medians[b], 2)

    ratios = {}
    for backend, policy in (("torch", "PASSIVE"), ("onnxruntime", None)):
        wait = policy or "library default"
        for load in ("quiet", "busy"):
            ratios[f"{backend} {load}: default ({cores} threads) / 1 thread"] = ratio(
                f"{backend} threads={cores} wait={wait} {load}", f"{backend} threads=1 wait={wait} {load}")
    ratios[f"torch busy: spinning / passive waiting ({cores} threads)"] = ratio(
        f"torch threads={cores} wait=library default busy", f"torch threads={cores} wait=PASSIVE busy")
    record = {
        "benchmark": "benchmarks/threads.py",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cores_available": cores, "cpu_count": os.cpu_count()},
        "workload": "aim_synthetic detail stage, 1 x 192 x 192 (its tile), median of repeats per process, median over rounds",
        "median_seconds": {k: round(v, 4) for k, v in medians.items()},
        "ratios": ratios,
        "note": "the machine is shared; 'quiet' means no busy-loop processes of this benchmark, not an idle machine",
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"threads-{datetime.date.today().isoformat()}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(ratios, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
