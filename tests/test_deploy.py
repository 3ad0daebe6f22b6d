"""--backend auto, the artifact cache and thread settings, as `mattrt infer` users meet them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mattrt.availability import available
from mattrt.cli import main
from mattrt.deploy import cache as cache_module
from mattrt.deploy import selection
from mattrt.deploy.cache import ENTRY_FILE, ArtifactCache
from mattrt.deploy.choice import choose_auto
from mattrt.deploy.plan import DeploymentRequest, deployment_chain
from mattrt.deploy.selection import MAX_DELTA_SAD, Candidate, decide, fidelity, measurement_size
from mattrt.deploy.sources import ModelSource
from mattrt.deploy.steps import GraphsFromSource
from mattrt.engines import backends
from mattrt.errors import InputError, MissingDependencyError
from mattrt.runtime import threads

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def image_file(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(folder / "p.png")
    return folder / "p.png"


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


def _infer(image: Path, out: Path, *extra) -> int:
    return main(["infer", str(image), "--out", str(out), "--no-progress", *map(str, extra)])


# -- --backend auto -------------------------------------------------------------------------------
@pytest.mark.skipif(available("torch_cuda") or available("cupy_device"), reason="this machine has a GPU")
def test_auto_on_a_cpu_machine_chooses_onnxruntime_and_says_why():
    choice = choose_auto()
    assert (choice.backend.name, choice.device, choice.precision) == ("onnxruntime", "cpu", "fp32")
    assert "torch on cuda: needs torch_cuda" in choice.reason and "tensorrt on cuda" in choice.reason
    # An export directory cannot run under torch; a model can run anywhere.
    assert choose_auto(source_kinds=("onnx", "plans")).backend.name == "onnxruntime"
    with pytest.raises(MissingDependencyError, match="no usable backend here on device cuda; probed: .*torch_cuda"):
        choose_auto(device="cuda")
    # With openvino installed the CPU candidates are measured (deploy/selection.py), onnxruntime fp32
    # first: the reference and the one kept unless another is faster within the fidelity bounds.
    pairs = [(b.name, p) for b, p in choice.candidates]
    assert pairs[0] == ("onnxruntime", "fp32")
    if available("openvino"):
        assert choice.measured and ("openvino", "fp32") in pairs and "measures" in choice.reason
        assert [p for _, p in pairs] == sorted((p for _, p in pairs), key=("fp32", "bf16", "int8").index)
        # a precision asked for narrows the candidates to the backends that run it
        assert [(b.name, p) for b, p in choose_auto(precision="bf16").candidates] in ([("openvino", "bf16")], [])
        only = choose_auto(precision="fp16")
        assert (only.backend.name, only.precision, only.measured) == ("onnxruntime", "fp16", False)


@pytest.mark.skipif(available("onnxruntime_cuda"), reason="this machine has onnxruntime's CUDA provider")
def test_a_missing_explicit_backend_is_an_error_naming_its_probe(tmp_path):
    with pytest.raises(MissingDependencyError, match="onnxruntime backend on cuda needs onnxruntime_cuda"):
        deployment_chain(DeploymentRequest(model="shm_tiny", backend="onnxruntime", device="cuda"),
                         cache=ArtifactCache(tmp_path), log=None)
    assert not list(tmp_path.iterdir())  # refused before any work


def test_an_explicit_backend_is_honoured_or_refused_never_replaced(tmp_path):
    with pytest.raises(InputError, match="the torch backend runs a registered model"):
        deployment_chain(DeploymentRequest(artifacts=tmp_path, backend="torch"), log=None)
    with pytest.raises(InputError, match="runs precision fp32, fp16, not 'int8'"):
        deployment_chain(DeploymentRequest(model="shm_tiny", backend="torch", precision="int8"), log=None)
    with pytest.raises(InputError, match="unknown backend 'tpu'"):
        deployment_chain(DeploymentRequest(model="shm_tiny", backend="tpu"), log=None)
    with pytest.raises(InputError, match="takes no --kernels"):
        backends.get_backend("onnxruntime").open(tmp_path, device="cpu", precision="fp32", kernels=True)


# -- the artifact cache through `mattrt infer --model` -----------------------------------------------
def test_second_run_reuses_the_cached_export(image_file, cache_dir, tmp_path, capsys):
    args = ("--model", "shm_tiny", "--backend", "onnxruntime", "--cache-dir", cache_dir)
    assert _infer(image_file, tmp_path / "first", *args) == 0
    first_log = capsys.readouterr().err
    assert "backend: onnxruntime on cpu, fp32 (asked for with --backend onnxruntime)" in first_log
    assert "exporting 'shm_tiny' once" in first_log
    assert _infer(image_file, tmp_path / "second", *args) == 0
    second_log = capsys.readouterr().err
    assert "reusing" in second_log and "exporting" not in second_log
    first = json.loads((tmp_path / "first" / "summary.json").read_text())["pipeline"]["selection"]
    second = json.loads((tmp_path / "second" / "summary.json").read_text())["pipeline"]["selection"]
    assert first["cache"]["hit"] is False and first["cache"]["build_seconds"] > 0
    assert second["cache"] == {**first["cache"], "hit": True, "build_seconds": 0.0}
    assert second["backend"] == "onnxruntime" and second["device"] == "cpu"
    # Both runs matte alike (the same graphs).
    a = np.asarray(Image.open(tmp_path / "first" / "p_alpha.png"))
    b = np.asarray(Image.open(tmp_path / "second" / "p_alpha.png"))
    assert np.array_equal(a, b)


def test_auto_is_the_default_and_is_recorded(image_file, cache_dir, tmp_path, capsys):
    assert _infer(image_file, tmp_path / "out", "--model", "shm_tiny", "--cache-dir", cache_dir) == 0
    err = capsys.readouterr().err
    selection = json.loads((tmp_path / "out" / "summary.json").read_text())["pipeline"]["selection"]
    assert selection["reason"].startswith("auto chose") and selection["reason"] in err
    choice = choose_auto()
    assert (selection["backend"], selection["precision"]) in [(b.name, p) for b, p in choice.candidates]
    if not choice.measured:
        assert selection["backend"] == choice.backend.name
        return
    # The first use measured the candidates (real timings: which one wins is this machine's business)
    measured = selection["measured"]
    assert "measured now" in selection["reason"] and not measured["entry"]["hit"]
    figures = {f["label"]: f for f in measured["figures"]}
    assert measured["chosen"] == f"{selection['backend']} {selection['precision']}"
    assert figures["onnxruntime fp32"]["reference"] and figures["openvino fp32"]["seconds"] > 0
    assert all(f["delta_sad"] <= MAX_DELTA_SAD for f in figures.values() if f["label"] == measured["chosen"])
    assert measured["rounds"] >= 1 and len(measured["image"]["size"]) == 2
    # ... and a later run reuses the choice from the cache and says so
    assert _infer(image_file, tmp_path / "again", "--model", "shm_tiny", "--cache-dir", cache_dir) == 0
    again = json.loads((tmp_path / "again" / "summary.json").read_text())["pipeline"]["selection"]
    assert "reused from" in again["reason"] and again["measured"]["entry"]["hit"]
    assert (again["backend"], again["precision"]) == (selection["backend"], selection["precision"])
    assert "auto: measuring" not in capsys.readouterr().err


def _figure(label: str, seconds, delta_sad=0.0, tail=0.0, **extra) -> dict:
    return {"label": label, "seconds": seconds, "delta_sad": delta_sad, "tail_abs_delta": tail,
            "held_to_bounds": not label.startswith("onnxruntime fp32"),
            "reference": label.startswith("onnxruntime fp32"), **extra}


def test_the_measured_choice_is_the_fastest_within_the_bounds():
    """deploy/selection.py's decision on injected figures (deterministic by construction)."""
    figures = [_figure("onnxruntime fp32", 0.100), _figure("openvino fp32", 0.050, 1e-6, 1e-5),
               _figure("openvino bf16", 0.040, 0.002, 0.05), _figure("openvino int8", 0.030, 0.02, 0.3)]
    chosen, reason = decide(figures)
    assert chosen == 2  # int8 is faster but moves SAD by 2 %
    assert "2.50x onnxruntime fp32" in reason and "openvino int8: ΔSAD 2.00 % > 1 %" in reason
    figures[3]["delta_sad"] = 0.005  # within ΔSAD, but its tail moved by 0.3
    assert decide(figures)[0] == 2 and "tail |Δalpha| 0.300 > 0.1" in decide(figures)[1]
    figures[3]["tail_abs_delta"] = 0.05
    assert decide(figures)[0] == 3
    # a more faithful candidate within the 5 % margin of the fastest is preferred
    figures[1]["seconds"] = 0.0315
    chosen, reason = decide(figures)
    assert chosen == 1 and "preferred to the" in reason
    # candidates that failed are never chosen, and the reason names them
    figures = [_figure("onnxruntime fp32", 0.1), _figure("openvino fp32", None, error="InputError: cannot compile")]
    chosen, reason = decide(figures)
    assert chosen == 0 and "openvino fp32: InputError: cannot compile" in reason
    # when the precision was asked for, no bounds apply (no reference ran)
    chosen, _ = decide([{"label": "onnxruntime int8", "seconds": 0.2, "reference": True},
                        {"label": "openvino int8", "seconds": 0.1}])
    assert chosen == 1
    with pytest.raises(InputError, match="no candidate ran within the fidelity bounds"):
        decide([_figure("openvino bf16", 0.1, 0.5)])


def test_fidelity_figures_and_the_measurement_image():
    truth = np.zeros((10, 10), np.float32)
    reference = np.full((10, 10), 0.1, np.float32)
    moved = reference.copy()
    moved[0, 0] = 1.0  # one pixel flipped: the maximum moves, the 99.9 % tail hardly
    figures = fidelity(moved, reference, truth)
    assert figures["max_abs_delta"] == pytest.approx(0.9)
    assert figures["tail_abs_delta"] < 0.9 and figures["delta_sad"] == pytest.approx(0.09)
    assert measurement_size(192, 32, 4) == (352, 352) and measurement_size(64, 16, 1) == (64, 64)
    assert measurement_size(100, 20, 8) == (340, 180)


def test_a_damaged_entry_is_rebuilt_with_a_message(image_file, cache_dir, tmp_path):
    messages: list[str] = []
    store = ArtifactCache(cache_dir, log=messages.append)
    graphs = GraphsFromSource(ModelSource("shm_tiny"), cache=store, log=None)
    first = graphs()
    graph = next(first.directory.glob("detail*.onnx"))
    graph.write_bytes(graph.read_bytes()[:100])  # truncated
    rebuilt = graphs()
    assert rebuilt.notes["graphs"]["entry"] == first.notes["graphs"]["entry"] and not rebuilt.notes["graphs"]["hit"]
    assert any("do not match their recorded SHA-256; rebuilding" in m for m in messages)
    assert graphs().notes["graphs"]["hit"]


def test_entries_from_another_mattrt_version_are_never_used(cache_dir, monkeypatch):
    store = ArtifactCache(cache_dir)
    key = {"step": "graphs", **ModelSource("shm_tiny").cache_key()}
    here = store.entry_dir(key, "shm_tiny-graphs")
    monkeypatch.setattr(cache_module, "__version__", "999.0")
    assert store.entry_dir(key, "shm_tiny-graphs") != here
    assert store.full_key(key)["mattrt"] == "999.0"


def test_an_unwritable_cache_is_reported_before_any_work(image_file, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    out = tmp_path / "out"
    assert _infer(image_file, out, "--model", "shm_tiny", "--backend", "onnxruntime", "--cache-dir", blocker / "c") == 1
    err = capsys.readouterr().err
    assert "is not writable" in err and "--cache-dir" in err and "exporting" not in err
    assert not out.exists()


def test_concurrent_runs_build_one_entry(tmp_path):
    """Two processes asking for the same entry at once: one builds, the other waits and reuses it."""
    script = textwrap.dedent(f"""
        import sys
        from mattrt.deploy.cache import ArtifactCache
        from mattrt.deploy.sources import ModelSource
        from mattrt.deploy.steps import GraphsFromSource
        store = ArtifactCache({str(tmp_path / 'cache')!r}, log=lambda m: print(m, flush=True))
        graphs = GraphsFromSource(ModelSource("alphanet_tiny"), cache=store, log=None)()
        print("HIT" if graphs.notes["graphs"]["hit"] else "BUILT", graphs.notes["graphs"]["entry"])
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    runs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, env=env) for _ in range(2)]
    outputs = [run.communicate(timeout=600)[0] for run in runs]
    assert all(run.returncode == 0 for run in runs), outputs
    finals = sorted(out.strip().splitlines()[-1].split()[0] for out in outputs)
    assert finals == ["BUILT", "HIT"], outputs
    entries = [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]
    assert len(entries) == 1 and (entries[0] / ENTRY_FILE).is_file()


def test_cache_list_and_clear_touch_only_cache_entries(cache_dir, tmp_path, capsys):
    store = ArtifactCache(cache_dir, log=None)
    assert store.entries(), "earlier tests made entries"
    assert main(["cache", "list", "--cache-dir", str(cache_dir), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert {e["name"] for e in listed["entries"]} == {e["name"] for e in store.entries()}
    assert all(e["intact"] for e in listed["entries"])
    foreign = cache_dir / "my-notes"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("not the cache's")
    assert main(["cache", "clear", "--cache-dir", str(cache_dir)]) == 0
    assert "removed" in capsys.readouterr().out
    assert store.entries() == []
    assert (foreign / "keep.txt").read_text() == "not the cache's"
    assert [p.name for p in cache_dir.iterdir() if p.is_dir()] == ["my-notes"]


# -- threads ---------------------------------------------------------------------------------------
def test_threads_default_to_the_cores_this_process_may_use(monkeypatch):
    monkeypatch.undo()  # the suite pins the default to 1; look at the real rule
    assert threads.available_cores() == len(os.sched_getaffinity(0))
    assert threads.resolve_threads(None) == threads.available_cores()
    assert threads.resolve_threads(3) == 3
    for bad in (0, -1, 1.5, True):
        with pytest.raises(InputError, match="--threads must be a positive whole number"):
            threads.resolve_threads(bad)


def test_onnxruntime_sessions_get_the_same_thread_settings():
    import onnxruntime as ort

    options = ort.SessionOptions()
    assert threads.configure_onnxruntime(options, 2) == 2
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (2, 1)
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


@pytest.mark.skipif(not available("openvino"), reason="needs openvino: a second CPU candidate")
def test_candidates_that_do_not_fit_in_memory_are_timed_alone(tmp_path, monkeypatch):
    """The measurement keeps candidates open for the interleaved rounds only while they fit in half
    the memory available; the others run alone afterwards and say so."""
    cache = ArtifactCache(tmp_path, log=None)
    graphs = GraphsFromSource(ModelSource("shm_tiny"), cache=cache, log=None)()
    monkeypatch.setattr(selection, "available_memory", lambda: 2)  # a budget of one byte
    candidates = [Candidate(backends.get_backend("onnxruntime"), "fp32"),
                  Candidate(backends.get_backend("openvino"), "fp32")]
    record = selection.measure(graphs, candidates, held_to_bounds=True, threads=1, batch=None, cache=cache,
                               log=lambda m: None)
    first, second = record["figures"]
    assert first["timing"] == "interleaved" and first["reference"]  # the first is always kept
    assert second["timing"].startswith("alone") and second["seconds"] > 0 and second["delta_sad"] < 0.01
    assert record["memory"]["budget_mib"] == 0
