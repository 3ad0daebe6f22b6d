"""Full-resolution refinement benchmark (issue 18, item 3; not a test): SAD, MSE, gradient error,
time per image and peak RSS of three ways to bring ISNet's 1024 x 1024 alpha to full resolution,
on synthetic salient scenes with exact alpha at 1080p and 4K.

    .venv/bin/python benchmarks/refine.py --graph PATH/TO/isnet_fp32.onnx [--threads 2]
        [--scenes-1080p 12] [--scenes-4k 4] [--memory] [--compile-time] [--name NAME]

Scenes: `generate_sample("salient_opaque", size, sample_rng(seed, i))`, 1080p: seeds 0-5 x i 0-1,
4K: seeds 0-3 x i 0 (the issue's research used the same ones). The network: the ISNet graph
(normalised FP32) on onnxruntime's CPU provider, as its model card runs it: the image stretched
to 1024 x 1024 (Pillow bilinear, antialiased), x / 255 - 0.5, output `output`, upsampled
bilinearly in float to the image's size (Pillow 'F'): that is the input of every method.
Methods, run one after another per scene in an order reversed on every other scene:
  bilinear   rembg's way in float: the upsampled network alpha itself (time: the upsampling);
  rembg_am   rembg's alpha matting: trimap from the alpha as rembg's uint8 mask
             ((alpha * 255) truncated; > 240 foreground, < 10 background, each eroded by a 10 x 10
             square, the rest unknown), then pymatting's estimate_alpha_cf on the whole image
             (its defaults: eps 1e-7, ichol, cg rtol 1e-7), as rembg.bg.alpha_matting_cutout does
             (its foreground estimation is not timed);
  refine     mattrt.runtime.refine.refine_alpha with its defaults (host path).
Per scene also (untimed): refine_alpha's tiled-vs-whole difference (tiled_versus_whole).
--memory: peak RSS in fresh processes (one per method and size, after a warm-up): refine at
1080p, 4K and 8K (the 4K scene upscaled 2x) in tiles, refine at 4K in one piece, rembg_am at
1080p and 4K; the peak is VmHWM, reset just before the call. --compile-time: `import pymatting` in fresh processes with an empty numba cache
(NUMBA_CACHE_DIR) and with the existing one, and refine's warm_up() in a fresh process.

Threads are set on purpose (--threads, default 2): NUMBA_NUM_THREADS, OMP_NUM_THREADS,
OPENBLAS_NUM_THREADS and MKL_NUM_THREADS before NumPy loads, onnxruntime intra-op threads, one
inter-op thread. The machine may be shared: the load average is recorded per scene.
Writes benchmarks/results/<name>.json and <name>.md (default name refine-<date>), and prints the
issue's targets: SAD <= 0.8 x bilinear, no worse than rembg_am, >= 3x faster than rembg_am.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mattrt.lazy import lazy_import

# rembg's upsampling and alpha matting, shared with `mattrt bench` (loaded after set_threads)
rembg = lazy_import("mattrt.jobs.bench.rembg")

RESULTS = Path(__file__).resolve().parent / "results"
METHODS = ("bilinear", "rembg_am", "refine")
THREAD_VARIABLES = ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
SIZES = {"1080p": (1920, 1080), "4K": (3840, 2160)}
CARD = {"size": 1024, "scale": 255.0, "mean": 0.5, "std": 1.0, "input": "input", "output": "output"}


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--graph", type=Path, help="ISNet ONNX graph (normalised FP32: input 'input', output 'output')")
    parser.add_argument("--threads", type=int, default=2, help="threads for numba, OpenMP/BLAS and onnxruntime")
    parser.add_argument("--scenes-1080p", type=int, default=12, help="1080p scenes (seeds 0-5 x i 0-1, in order)")
    parser.add_argument("--scenes-4k", type=int, default=4, help="4K scenes (seeds 0-3, i 0)")
    parser.add_argument("--memory", action="store_true", help="peak RSS in fresh processes (1080p, 4K, 8K)")
    parser.add_argument("--compile-time", action="store_true", help="numba compile time of pymatting (about a minute)")
    parser.add_argument("--name", default=None, help="results file name (default refine-<date>)")
    parser.add_argument("--rss-child", nargs=2, metavar=("METHOD", "NPZ"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rss_child is None and args.graph is None:
        parser.error("--graph is required (the ISNet ONNX graph)")
    return args


def set_threads(threads: int) -> None:
    for name in THREAD_VARIABLES:
        os.environ[name] = str(threads)


# -- environment --------------------------------------------------------------------------------------------
def machine() -> dict:
    info = {"python": platform.python_version(), "platform": platform.platform(), "cpu_count": os.cpu_count(),
            "usable_cores": len(os.sched_getaffinity(0))}
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, timeout=20).stdout.splitlines():
            key, _, value = line.partition(":")
            if key in ("Model name", "Flags", "Thread(s) per core", "CPU(s)", "L3 cache"):
                info[key] = value.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        info["lscpu"] = f"unavailable: {exc}"
    try:
        info["memory_GiB"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        pass
    return info


def versions() -> dict:
    import importlib.metadata as metadata

    found = {}
    for name in ("numpy", "scipy", "pymatting", "numba", "onnxruntime", "pillow"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def git_revision() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


# -- the methods ----------------------------------------------------------------------------------------------
def isnet_session(graph: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])


def isnet_alpha(session, image):
    """The card's way: stretch to 1024^2, x/255 - 0.5, run; the 1024^2 output (float32)."""
    import numpy as np
    from PIL import Image

    side = CARD["size"]
    x = np.asarray(Image.fromarray(image).resize((side, side), Image.Resampling.BILINEAR)).astype(np.float32)
    x = (x / np.float32(CARD["scale"]) - np.float32(CARD["mean"])) / np.float32(CARD["std"])
    feed = {CARD["input"]: np.ascontiguousarray(x.transpose(2, 0, 1)[None])}
    return session.run([CARD["output"]], feed)[0][0, 0]


def run_method(name: str, image, alpha, prediction=None, stats=None):
    from mattrt.runtime.refine import refine_alpha

    if name == "bilinear":
        return rembg.bilinear(prediction, *image.shape[:2])
    if name == "rembg_am":
        return rembg.rembg_alpha_matting(image, alpha)
    if name == "refine":
        return refine_alpha(image, alpha, stats=stats)
    raise ValueError(name)


def warm_up() -> dict:
    """Load pymatting's numba functions and run each method once on a small image."""
    import numpy as np

    from mattrt.runtime import refine

    started = time.perf_counter()
    import pymatting  # noqa: F401  (numba loads or compiles its functions here)

    imported = time.perf_counter() - started
    refine.warm_up()
    rng = np.random.default_rng(0)
    image = (rng.random((64, 96, 3)) * 255).astype(np.uint8)
    alpha = np.zeros((64, 96), np.float32)
    alpha[16:48, 24:72] = 1.0
    alpha[30:34] = 0.5
    rembg.rembg_alpha_matting(image, alpha)
    return {"import_pymatting_s": imported, "warm_up_s": time.perf_counter() - started}


# -- the scene loop -----------------------------------------------------------------------------------------------
def scene_list(count_1080p: int, count_4k: int) -> list[tuple[str, int, int]]:
    scenes = [("1080p", seed, i) for seed in range(6) for i in range(2)][:count_1080p]
    return scenes + [("4K", seed, 0) for seed in range(4)][:count_4k]


def measure_scenes(args, log) -> list[dict]:

    from mattrt.data.synthetic import generate_sample, sample_rng
    from mattrt.metrics import gradient_error, mse, sad
    from mattrt.runtime.refine import tiled_versus_whole

    session = isnet_session(args.graph, args.threads)
    rows = []
    for n, (size_name, seed, index) in enumerate(scene_list(args.scenes_1080p, args.scenes_4k)):
        before = load()
        sample = generate_sample("salient_opaque", SIZES[size_name], sample_rng(seed, index))
        image, gt = sample.image, sample.alpha
        started = time.perf_counter()
        prediction = isnet_alpha(session, image)
        network_s = time.perf_counter() - started
        alpha = rembg.bilinear(prediction, *gt.shape)
        row = {"scene": f"{size_name} seed {seed} i {index}", "size": size_name, "variant": sample.variant,
               "network_s": network_s, "load_before": before, "methods": {}}
        order = list(METHODS) if n % 2 == 0 else list(METHODS)[::-1]
        for name in order:
            stats = {}
            started = time.perf_counter()
            out = run_method(name, image, alpha, prediction, stats)
            elapsed = time.perf_counter() - started
            row["methods"][name] = {"sad": sad(out, gt), "mse": mse(out, gt), "grad": gradient_error(out, gt),
                                    "time_s": elapsed}
            if name == "refine":
                row["refine_stats"] = stats
        comparison = tiled_versus_whole(image, alpha)
        row["tiled_versus_whole"] = comparison
        row["load_after"] = load()
        rows.append(row)
        m = row["methods"]
        log(f"{row['scene']:20s} {sample.variant:4s} SAD bilinear {m['bilinear']['sad']:7.2f}  rembg_am "
            f"{m['rembg_am']['sad']:7.2f} ({m['rembg_am']['time_s']:5.2f} s)  refine {m['refine']['sad']:7.2f} "
            f"({m['refine']['time_s']:5.2f} s)  tiled-whole max {comparison['max_abs_diff']:.1e}  load {before}")
    return rows


def summarise(rows: list[dict]) -> dict:
    summary = {}
    for size in SIZES:
        part = [r for r in rows if r["size"] == size]
        if not part:
            continue
        methods = {}
        for name in METHODS:
            values = [r["methods"][name] for r in part]
            methods[name] = {"sad": sum(v["sad"] for v in values), "grad": sum(v["grad"] for v in values),
                             "mse_mean": statistics.fmean(v["mse"] for v in values),
                             "time_s": sum(v["time_s"] for v in values),
                             "time_median_s": statistics.median(v["time_s"] for v in values)}
        refine, rembg, plain = methods["refine"], methods["rembg_am"], methods["bilinear"]
        per_scene_speedup = [r["methods"]["rembg_am"]["time_s"] / r["methods"]["refine"]["time_s"] for r in part]
        summary[size] = {
            "scenes": len(part),
            "methods": methods,
            "sad_refine_over_bilinear": refine["sad"] / plain["sad"],
            "sad_rembg_am_over_bilinear": rembg["sad"] / plain["sad"],
            "sad_refine_over_rembg_am": refine["sad"] / rembg["sad"],
            "speedup_vs_rembg_am": rembg["time_s"] / refine["time_s"],
            "speedup_vs_rembg_am_per_scene": {"median": statistics.median(per_scene_speedup),
                                              "min": min(per_scene_speedup), "max": max(per_scene_speedup)},
            "scenes_refine_worse_than_bilinear": [r["scene"] for r in part
                                                  if r["methods"]["refine"]["sad"] > r["methods"]["bilinear"]["sad"]],
            "scenes_refine_worse_than_rembg_am": [r["scene"] for r in part
                                                  if r["methods"]["refine"]["sad"] > r["methods"]["rembg_am"]["sad"]],
            "tiled_versus_whole_max_abs_diff": max(r["tiled_versus_whole"]["max_abs_diff"] for r in part),
            "load_range": [min(min(r["load_before"][0], r["load_after"][0]) for r in part),
                           max(max(r["load_before"][0], r["load_after"][0]) for r in part)],
        }
        summary[size]["targets"] = {
            "sad_at_most_0.8x_bilinear": summary[size]["sad_refine_over_bilinear"] <= 0.8,
            "no_worse_than_rembg_am": refine["sad"] <= rembg["sad"],
            "at_least_3x_faster_than_rembg_am": summary[size]["speedup_vs_rembg_am"] >= 3.0,
        }
    return summary


# -- memory and compile time, each in fresh processes -----------------------------------------------------------
def rss_child(method: str, path: str) -> int:
    """In a fresh process: load the inputs, warm up, then run `method` once; print JSON."""
    import numpy as np

    from mattrt.runtime.refine import RefineOptions, refine_alpha

    data = np.load(path)
    image, alpha = data["image"], data["alpha"]
    warm_up()
    peak_before = _peak_rss()
    reset = _reset_peak_rss()
    current = _current_rss()
    started = time.perf_counter()
    if method == "refine_whole":
        refine_alpha(image, alpha, RefineOptions(tile=None))
    elif method == "refine":
        refine_alpha(image, alpha)
    else:
        rembg.rembg_alpha_matting(image, alpha)
    elapsed = time.perf_counter() - started
    print(json.dumps({"rss_before_MiB": current, "peak_before_MiB": peak_before, "peak_MiB": _peak_rss(),
                      "peak_reset_before_the_call": reset,
                      "inputs_MiB": (image.nbytes + alpha.nbytes) / 2**20, "time_s": elapsed}))
    return 0


def _peak_rss() -> float:
    """VmHWM: this address space's peak RSS (ru_maxrss would carry the parent's peak across exec)."""
    with open("/proc/self/status") as stream:
        for line in stream:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux: '5' to /proc/self/clear_refs), so the peak is the call's."""
    try:
        with open("/proc/self/clear_refs", "w") as stream:
            stream.write("5")
        return True
    except OSError:
        return False


def _current_rss() -> float:
    with open("/proc/self/statm") as stream:
        return int(stream.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def measure_memory(args, log) -> list[dict]:
    import numpy as np
    from PIL import Image

    from mattrt.data.synthetic import generate_sample, sample_rng

    session = isnet_session(args.graph, args.threads)
    cases = []
    with tempfile.TemporaryDirectory() as work:
        inputs = {}
        for size_name, size in SIZES.items():
            sample = generate_sample("salient_opaque", size, sample_rng(0, 0))
            alpha = rembg.bilinear(isnet_alpha(session, sample.image), size[1], size[0])
            inputs[size_name] = Path(work) / f"{size_name}.npz"
            np.savez(inputs[size_name], image=sample.image, alpha=alpha)
        del sample
        # 8K: the 4K scene and its network alpha upscaled 2x (memory and time only: no ground truth)
        data = np.load(inputs["4K"])
        image8 = np.asarray(Image.fromarray(data["image"]).resize((7680, 4320), Image.Resampling.BICUBIC))
        alpha8 = np.clip(np.asarray(Image.fromarray(data["alpha"], mode="F").resize((7680, 4320),
                                                                                     Image.Resampling.BILINEAR)), 0, 1)
        inputs["8K"] = Path(work) / "8K.npz"
        np.savez(inputs["8K"], image=image8, alpha=alpha8.astype(np.float32))
        del data, image8, alpha8
        plan = [("refine", "1080p"), ("refine", "4K"), ("refine", "8K"), ("refine_whole", "4K"),
                ("rembg_am", "1080p"), ("rembg_am", "4K")]
        for method, size_name in plan:
            command = [sys.executable, str(Path(__file__).resolve()), "--rss-child", method, str(inputs[size_name])]
            result = subprocess.run(command, capture_output=True, text=True, env=os.environ.copy())
            case = {"method": method, "size": size_name, "load_before": load()}
            if result.returncode == 0:
                case.update(json.loads(result.stdout.strip().splitlines()[-1]))
                case["added_MiB"] = case["peak_MiB"] - case["rss_before_MiB"]
                log(f"peak RSS {method:12s} {size_name:5s} {case['peak_MiB']:8.0f} MiB (process before the call "
                    f"{case['rss_before_MiB']:.0f} MiB, inputs {case['inputs_MiB']:.0f} MiB), {case['time_s']:.2f} s")
            else:
                case["error"] = result.stderr[-2000:]
                log(f"peak RSS {method} {size_name}: FAILED {result.stderr[-300:]}")
            cases.append(case)
    return cases


def measure_compile_time(log) -> dict:
    def timed(code: str, env: dict) -> float:
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, env=env, capture_output=True)
        return time.perf_counter() - started

    found = {"load_before": load()}
    with tempfile.TemporaryDirectory() as cache:
        cold = {**os.environ, "NUMBA_CACHE_DIR": cache}
        found["import_pymatting_empty_cache_s"] = timed("import pymatting", cold)
        found["import_pymatting_after_that_s"] = timed("import pymatting", cold)
    found["import_pymatting_installed_cache_s"] = timed("import pymatting", os.environ.copy())
    found["python_numpy_scipy_import_s"] = timed("import numpy, scipy.sparse", os.environ.copy())
    found["first_refine_call_fresh_process_s"] = timed(
        "from mattrt.runtime.refine import warm_up; warm_up()", os.environ.copy())
    found["load_after"] = load()
    log(f"numba: import pymatting {found['import_pymatting_empty_cache_s']:.1f} s with an empty cache, "
        f"{found['import_pymatting_after_that_s']:.1f} s once cached, {found['import_pymatting_installed_cache_s']:.1f} s "
        f"with the installed cache; first refine call in a fresh process {found['first_refine_call_fresh_process_s']:.1f} s")
    return found


# -- report ---------------------------------------------------------------------------------------------------------
def markdown(result: dict) -> str:
    lines = [f"# Refinement benchmark {result['date']}", "",
             f"`{result['command']}`; threads {result['threads']}; CPU {result['machine'].get('Model name')} "
             f"({result['machine'].get('usable_cores')} usable cores); load average {result['load_start']} at the start, "
             f"{result['load_end']} at the end.", ""]
    for size, part in result["summary"].items():
        lines += [f"## {size}, {part['scenes']} scenes (1-min load {part['load_range'][0]}-{part['load_range'][1]})", "",
                  "| method | SAD | SAD / bilinear | grad | mean MSE | time (s) | median s / image | speed-up vs rembg_am |",
                  "|---|---|---|---|---|---|---|---|"]
        rembg_time = part["methods"]["rembg_am"]["time_s"]
        for name, m in part["methods"].items():
            speed = f"{rembg_time / m['time_s']:.1f}x" if name != "bilinear" else "-"
            lines.append(f"| {name} | {m['sad']:.1f} | {m['sad'] / part['methods']['bilinear']['sad']:.3f} | "
                         f"{m['grad']:.1f} | {m['mse_mean']:.5f} | {m['time_s']:.2f} | {m['time_median_s']:.2f} | {speed} |")
        per = part["speedup_vs_rembg_am_per_scene"]
        lines += ["", f"- refine / bilinear SAD {part['sad_refine_over_bilinear']:.3f} (target <= 0.8: "
                  f"{'met' if part['targets']['sad_at_most_0.8x_bilinear'] else 'NOT met'}); refine / rembg_am "
                  f"{part['sad_refine_over_rembg_am']:.3f} ({'met' if part['targets']['no_worse_than_rembg_am'] else 'NOT met'}); "
                  f"speed-up {part['speedup_vs_rembg_am']:.1f}x (target >= 3x: "
                  f"{'met' if part['targets']['at_least_3x_faster_than_rembg_am'] else 'NOT met'}; per scene median "
                  f"{per['median']:.1f}x, {per['min']:.1f}-{per['max']:.1f}x)",
                  f"- scenes where refine is worse than bilinear: {part['scenes_refine_worse_than_bilinear'] or 'none'}; "
                  f"than rembg_am: {part['scenes_refine_worse_than_rembg_am'] or 'none'}",
                  f"- tiled vs whole: max |difference| {part['tiled_versus_whole_max_abs_diff']:.2e}", ""]
    if result.get("memory"):
        lines += ["## Peak RSS (fresh process per case, after a warm-up)", "",
                  "| method | size | peak RSS (MiB) | process before the call (MiB) | added (MiB) | inputs (MiB) | time (s) |",
                  "|---|---|---|---|---|---|---|"]
        for case in result["memory"]:
            if "error" in case:
                lines.append(f"| {case['method']} | {case['size']} | failed | | | | |")
                continue
            lines.append(f"| {case['method']} | {case['size']} | {case['peak_MiB']:.0f} | {case['rss_before_MiB']:.0f} | "
                         f"{case['added_MiB']:.0f} | {case['inputs_MiB']:.0f} | {case['time_s']:.2f} |")
        lines.append("")
    if result.get("compile_time"):
        c = result["compile_time"]
        lines += ["## numba", "", f"`import pymatting`: {c['import_pymatting_empty_cache_s']:.1f} s with an empty numba "
                  f"cache (compiling), {c['import_pymatting_after_that_s']:.1f} s from that cache, "
                  f"{c['import_pymatting_installed_cache_s']:.1f} s with the installed cache; first refine_alpha "
                  f"call in a fresh process (imports + warm-up): {c['first_refine_call_fresh_process_s']:.1f} s "
                  f"(load {c['load_before']} -> {c['load_after']}).", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    set_threads(args.threads)
    if args.rss_child:
        return rss_child(*args.rss_child)
    date = datetime.date.today().isoformat()
    name = args.name or f"refine-{date}"

    def log(message: str) -> None:
        print(message, flush=True)

    result = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "command": " ".join(sys.argv),
              "git_revision": git_revision(), "machine": machine(), "versions": versions(), "threads": args.threads,
              "thread_variables": {k: os.environ[k] for k in THREAD_VARIABLES}, "graph": str(args.graph),
              "card": CARD, "load_start": load()}
    log(f"load average {result['load_start']}; threads {args.threads}")
    result["warm_up"] = warm_up()
    log(f"warm-up: import pymatting {result['warm_up']['import_pymatting_s']:.1f} s, "
        f"all {result['warm_up']['warm_up_s']:.1f} s")
    result["rows"] = measure_scenes(args, log)
    result["summary"] = summarise(result["rows"])
    if args.memory:
        result["memory"] = measure_memory(args, log)
    if args.compile_time:
        result["compile_time"] = measure_compile_time(log)
    result["load_end"] = load()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=1, default=float) + "\n")
    report = markdown(result)
    (RESULTS / f"{name}.md").write_text(report + "\n")
    print()
    print(report)
    print(f"wrote {RESULTS / (name + '.json')} and {name}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
