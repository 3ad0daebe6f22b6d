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
from mattrt.deploy.cache import ENTRY_FILE, ArtifactCache
from mattrt.deploy.choice import choose_auto
from mattrt.deploy.plan import DeploymentRequest, deployment_chain
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
    assert (choice.backend.name, choice.device) == ("onnxruntime", "cpu")
    assert "torch on cuda: needs torch_cuda" in choice.reason and "tensorrt on cuda" in choice.reason
    # An export directory cannot run under torch; a model can run anywhere.
    assert choose_auto(source_kinds=("onnx", "plans")).backend.name == "onnxruntime"
    with pytest.raises(MissingDependencyError, match="no usable backend here on device cuda; probed: .*torch_cuda"):
        choose_auto(device="cuda")


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
    assert selection["backend"] == choose_auto().backend.name


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
