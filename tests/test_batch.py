"""`mattrt batch` on Ray Data: a real two-node Ray cluster on this machine (one per module), a
worker process killed mid-run, exactly-once outputs equal to `mattrt infer`'s, resume, bad
inputs, a full disk, and the refusals that come before any work.

The cluster (tests/ray_cluster.py) is `ray start --head` plus one worker node, 1 CPU each, each in
its own session, stopped by killing those sessions only (never `ray stop`, which would stop every
Ray cluster on the machine). Jobs run shm_tiny with calibrated random weights on small images,
torch with one thread, so outputs can be compared bit for bit with `mattrt infer` run here.

Events, not timing: an input that is a FIFO holds whichever actor reads it until the test writes
the image into it. The test sees the actor arrive (a non-blocking open for writing succeeds once a
reader has the FIFO open), finds its process (/proc/*/fd), kills it, and feeds the image only to
the restarted actor's second attempt.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from ray_cluster import LocalCluster, free_port, process_table

from mattrt import availability
from mattrt.cli import main
from mattrt.errors import InputError
from mattrt.export.parity import generated_image
from mattrt.imagewrite import write_bytes_once

ROOT = Path(__file__).resolve().parents[1]
MODEL: list[str] = []
# Ray Data warns about its own deprecated settings when it copies its context; nothing of mattrt's.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")
needs_ray = pytest.mark.skipif(not availability.available("ray"), reason=availability.skip_reason("ray"))
DEADLINE_S = 240


@pytest.fixture(scope="module", autouse=True)
def weights(tmp_path_factory):
    import torch

    from mattrt.models import create_model
    from mattrt.runtime.diagnostics import calibrated_random_weights

    path = tmp_path_factory.mktemp("weights") / "shm_tiny.pth"
    torch.save(calibrated_random_weights(create_model("shm_tiny"), seed=3).state_dict(), path)
    MODEL[:] = ["--model", "shm_tiny", "--checkpoint", str(path), "--backend", "torch", "--threads", "1",
                "--no-progress"]
    yield path
    MODEL.clear()


@pytest.fixture(scope="module")
def cluster():
    """Head (1 CPU) + one worker node (1 CPU); this process gets the cluster's token to connect
    (before it imports ray: Ray reads its authentication settings when it loads)."""
    if not availability.available("ray"):
        pytest.skip(availability.skip_reason("ray"))
    assert "ray" not in sys.modules, "ray was imported before the cluster's token was set"
    temp_dir = Path(tempfile.mkdtemp(prefix="mattrt-ray-", dir="/tmp"))  # short: Ray's socket paths are limited
    ray_cluster = LocalCluster(temp_dir, env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    saved = {name: os.environ.get(name) for name in ray_cluster.environment}
    os.environ.update(ray_cluster.environment)
    try:
        yield ray_cluster.start()
    finally:
        left = ray_cluster.stop()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        shutil.rmtree(temp_dir, ignore_errors=True)
        assert not left, f"cluster processes left running: {left}"


def _image(index: int, size=(96, 128)) -> np.ndarray:
    return generated_image(max(size), index)[: size[0], : size[1]]


def _png(index: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(_image(index)).save(buffer, format="PNG")
    return buffer.getvalue()


def _batch(*args) -> int:
    return main(["batch", *map(str, args), *MODEL])


def _infer(*args) -> int:
    return main(["infer", *map(str, args), *MODEL])


def _manifest(out: Path) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(out / "manifest.parquet").to_pylist()


def _last_json(text: str) -> dict:
    return json.loads([line for line in text.splitlines() if line.startswith("{")][-1])


def _environment() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def _open_writer(fifo: Path, process: subprocess.Popen, deadline: float) -> int:
    """Wait for a reader of the FIFO (an actor reading that input), then open it for writing."""
    while True:
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno != errno.ENXIO:  # ENXIO: no reader yet
                raise
        assert process.poll() is None, f"the job ended before reading {fifo.name}"
        assert time.monotonic() < deadline, f"no worker read {fifo.name}"
        time.sleep(0.02)


def _reader_of(fifo: Path, deadline: float) -> int:
    """The process that has the FIFO open (other than this one)."""
    while time.monotonic() < deadline:
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            with contextlib.suppress(OSError):
                for fd in os.listdir(f"/proc/{entry}/fd"):
                    with contextlib.suppress(OSError):
                        if os.readlink(f"/proc/{entry}/fd/{fd}") == str(fifo):
                            return int(entry)
        time.sleep(0.02)
    raise AssertionError(f"no process holds {fifo} open")


@contextlib.contextmanager
def _batch_in_background(args: list, log: Path):
    """`mattrt batch ARGS` in a child process and the deadline of the test's waits on it; the child
    is killed on the way out if it is still running."""
    with open(log, "w") as stream:
        process = subprocess.Popen([sys.executable, "-m", "mattrt.cli", "batch", *map(str, args), *MODEL],
                                   env=_environment(), stdout=stream, stderr=subprocess.STDOUT)
    try:
        yield process, time.monotonic() + DEADLINE_S
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _feed_and_wait(writer: int, data: bytes, process: subprocess.Popen, deadline: float) -> None:
    """The held FIFO input's bytes, then the job's end."""
    os.write(writer, data)
    os.close(writer)
    process.wait(timeout=max(1.0, deadline - time.monotonic()))


# -- a worker killed mid-run -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def killed_run(cluster, tmp_path_factory):
    """40 images in tasks of 4; img_023 (the last of its task) is a FIFO: the actor that reaches
    it is killed there, after writing img_020..img_022, and the image is fed to its retry."""
    root = tmp_path_factory.mktemp("killed")
    folder, reference = root / "in", root / "reference"
    folder.mkdir()
    reference.mkdir()
    inputs = []
    for index in range(40):
        name = f"img_{index:03d}.png"
        (reference / name).write_bytes(_png(index))
        if index == 23:
            os.mkfifo(folder / name)
        else:
            shutil.copy(reference / name, folder / name)
        inputs.append(folder / name)
    listing = root / "inputs.txt"
    listing.write_text("\n".join(str(p) for p in inputs) + "\n")
    out, log = root / "out", root / "batch.log"
    started = time.monotonic()
    with _batch_in_background([listing, "--out", out, "--address", cluster.address, "--workers", 2,
                               "--images-per-task", 4], log) as (process, deadline):
        held = folder / "img_023.png"
        writer = _open_writer(held, process, deadline)
        victim = _reader_of(held, deadline)
        session, command = process_table()[victim]
        os.kill(victim, signal.SIGKILL)
        while victim in process_table():  # until it is gone (a zombie holds no FIFO): the next reader is new
            assert time.monotonic() < deadline, "the killed worker did not end"
            time.sleep(0.02)
        os.close(writer)
        writer = _open_writer(held, process, deadline)  # the retried task, on the restarted actor
        assert _reader_of(held, deadline) != victim
        _feed_and_wait(writer, (reference / "img_023.png").read_bytes(), process, deadline)
    return {"root": root, "listing": listing, "out": out, "reference": reference, "log": log.read_text(),
            "returncode": process.returncode, "victim": victim, "victim_session": session,
            "victim_command": command, "seconds": time.monotonic() - started, "inputs": inputs}


@needs_ray
def test_a_killed_worker_costs_nothing_and_outputs_equal_infer(killed_run, cluster):
    run = killed_run
    assert run["returncode"] == 0, run["log"]
    # The killed process was a Ray worker of this cluster, and it is gone.
    assert run["victim_session"] in cluster.sessions and run["victim_command"].startswith("ray::"), run
    assert run["victim"] not in process_table()
    # Every image exactly once: one record each, all done; one file each, no temporary file.
    rows = _manifest(run["out"])
    assert sorted(r["input"] for r in rows) == sorted(str(p) for p in run["inputs"])
    assert {r["status"] for r in rows} == {"done"}, [r["error"] for r in rows if r["error"]]
    assert len({r["job_id"] for r in rows}) == 1
    files = sorted(p.name for p in run["out"].iterdir())
    assert files == sorted([f"img_{i:03d}_alpha.png" for i in range(40)] + [".mattrt-batch.lock", "manifest.parquet"])
    # The retried task recomputed the three images before the FIFO and found them written: each
    # was created once and kept (a hard link that fails if the name exists), none replaced.
    identical = sorted(Path(r["input"]).name for r in rows if r["note"] == "identical output already present")
    assert identical == ["img_020.png", "img_021.png", "img_022.png"]
    assert {r["note"] for r in rows} == {"written", "identical output already present"}
    for record in rows:
        stat = os.stat(record["output"])
        assert (stat.st_size, stat.st_mtime_ns, stat.st_nlink) == (record["output_bytes"], record["output_mtime_ns"], 1)
    # Both nodes worked; the summary names throughput and failures.
    assert len({r["host"] for r in rows}) >= 1 and len({r["node"] for r in rows}) == 2
    summary = _last_json(run["log"])
    assert (summary["processed"], summary["failed"], summary["identical"], summary["nodes"]) == (40, 0, 3, 2)
    assert summary["images_per_second"] > 0
    # Bit for bit what `mattrt infer` writes for the same images and settings.
    expected = run["root"] / "infer"
    assert _infer(run["reference"], "--out", expected) == 0
    for index in range(40):
        name = f"img_{index:03d}_alpha.png"
        assert (run["out"] / name).read_bytes() == (expected / name).read_bytes(), name


@needs_ray
def test_resume_redoes_nothing_and_other_settings_are_refused(killed_run, cluster, capsys):
    out = killed_run["out"]
    before = {p.name: (p.stat().st_mtime_ns, p.stat().st_ino) for p in out.iterdir()}
    rows_before = _manifest(out)
    assert _batch(killed_run["listing"], "--out", out, "--address", cluster.address, "--detail-scale", "0.5") == 1
    err = capsys.readouterr().err
    assert "as done with other settings (detail_scale 1.0 -> 0.5)" in err and "pass --overwrite" in err
    # The FIFO is still an input: a resume that read any input would hang on it.
    assert _batch(killed_run["listing"], "--out", out, "--address", cluster.address) == 0
    captured = capsys.readouterr()
    summary = _last_json(captured.out)
    assert (summary["processed"], summary["skipped"], summary["failed"]) == (0, 40, 0)
    assert "40 image(s) already done with these settings" in captured.err
    after = {p.name: (p.stat().st_mtime_ns, p.stat().st_ino) for p in out.iterdir() if p.name != "manifest.parquet"}
    assert after == {k: v for k, v in before.items() if k != "manifest.parquet"}
    assert sorted(map(str, _manifest(out)), key=str) == sorted(map(str, rows_before), key=str)


# -- bad inputs, on the embedded Ray (no --address) --------------------------------------------------
@needs_ray
def test_bad_inputs_are_recorded_with_infers_messages_and_the_job_goes_on(cluster, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    for index in range(3):
        (folder / f"good{index}.png").write_bytes(_png(index))
    (folder / "uri.png").write_bytes(_png(7))
    (folder / "corrupt.png").write_bytes(b"this is not an image at all")
    (folder / "empty.jpg").write_bytes(b"")
    good = (folder / "good0.png").read_bytes()
    (folder / "truncated.png").write_bytes(good[: len(good) // 2])
    (folder / "taken.png").write_bytes(_png(5))
    out = tmp_path / "out"
    out.mkdir()
    (out / "taken_alpha.png").write_bytes(b"someone else's file")
    listing = folder / "list.csv"
    listing.write_text("path,comment\ngood0.png,relative to the list\ngood1.png,\ngood2.png,\ncorrupt.png,\n"
                       "empty.jpg,\ntruncated.png,\ntaken.png,\n")
    uri = (folder / "uri.png").as_uri()
    assert _batch(listing, uri, tmp_path / "missing.png", "--out", out, "--workers", 1) == 1
    rows = {Path(r["input"]).name: r for r in _manifest(out)}
    assert {name for name, r in rows.items() if r["status"] == "done"} == {"good0.png", "good1.png", "good2.png",
                                                                          "uri.png"}
    assert rows["taken.png"]["error"] == (f"{out / 'taken_alpha.png'}: already exists with other content; pass "
                                          "--overwrite to replace it")
    assert (out / "taken_alpha.png").read_bytes() == b"someone else's file"
    assert rows["missing.png"]["error"] == f"{tmp_path / 'missing.png'}: no such file or folder"
    err = capsys.readouterr().err
    assert "mattrt batch: failed: " in err and "corrupt.png" in err
    # The messages `mattrt infer` gives for the same files, and the same bytes for the good ones
    # (the URI read through pyarrow included).
    expected = tmp_path / "infer"
    bad = [folder / name for name in ("corrupt.png", "empty.jpg", "truncated.png")]
    assert _infer(*bad, *(folder / f"good{i}.png" for i in range(3)), folder / "uri.png", "--out", expected) == 1
    infer_errors = {Path(f["input"]).name: f["error"] for f in json.loads((expected / "summary.json").read_text())[
        "failures"]}
    assert {name: rows[name]["error"] for name in infer_errors} == infer_errors
    assert "not a readable PNG, JPEG, WebP or TIFF" in infer_errors["corrupt.png"]
    for name in ("good0", "good1", "good2", "uri"):
        assert (out / f"{name}_alpha.png").read_bytes() == (expected / f"{name}_alpha.png").read_bytes(), name


@needs_ray
def test_an_interrupted_job_keeps_what_finished_and_the_rerun_does_the_rest(cluster, tmp_path):
    """SIGTERM to the driver while a worker waits on a FIFO input: exit 130, the manifest lists
    what finished, the job's actors end with the driver, and the rerun skips what finished."""
    folder = tmp_path / "in"
    folder.mkdir()
    held = folder / "held.png"
    os.mkfifo(held)
    for index in range(4):
        (folder / f"img{index}.png").write_bytes(_png(index))
    listing = tmp_path / "inputs.txt"
    listing.write_text("\n".join(map(str, [*sorted(folder.glob("img*.png")), held])))
    out, log = tmp_path / "out", tmp_path / "batch.log"
    with _batch_in_background([listing, "--out", out, "--address", cluster.address, "--workers", 1],
                              log) as (process, deadline):
        writer = _open_writer(held, process, deadline)
        reader = _reader_of(held, deadline)
        while len(list(out.glob("img*_alpha.png"))) < 4:  # the images before the FIFO are written
            assert time.monotonic() < deadline and process.poll() is None, log.read_text()
            time.sleep(0.02)
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=max(1.0, deadline - time.monotonic()))
        os.close(writer)
    assert process.returncode == 130, log.read_text()
    assert "interrupted: " in log.read_text()
    while reader in process_table():  # the job's actor ends with its driver
        assert time.monotonic() < deadline, "the interrupted job's actor is still running"
        time.sleep(0.05)
    rows = _manifest(out)
    finished = {r["input"] for r in rows if r["status"] == "done"}
    assert finished and str(held) not in finished
    for record in rows:
        assert os.stat(record["output"]).st_size == record["output_bytes"]
    assert not [p.name for p in out.iterdir() if p.name.endswith(".part") or p.name == ".mattrt-manifest"]
    held.unlink()
    held.write_bytes(_png(9))
    assert _batch(listing, "--out", out, "--address", cluster.address, "--workers", 1) == 0
    assert {r["input"] for r in _manifest(out) if r["status"] == "done"} == {str(held), *map(str, folder.glob("img*"))}
    kept = {r["input"] for r in _manifest(out) if r["input"] in finished and r["job_id"] == rows[0]["job_id"]}
    assert kept == finished  # what the interrupted job finished was skipped, not redone


@needs_ray
@pytest.mark.skipif(not availability.available("tritonserver"), reason=availability.skip_reason("tritonserver"))
def test_workers_can_send_the_matting_to_a_triton_server(cluster, serving_export, tmp_path):
    """--backend triton --url: the actors read, send and write; the server tiles and runs the
    engines. The outputs equal `mattrt infer --backend triton`'s."""
    from mattrt.serving.repository import RepositoryOptions, build_repository
    from mattrt.serving.server import ServerOptions, TritonServer

    repository = build_repository(serving_export, tmp_path / "repo", RepositoryOptions(), log=None)
    folder = tmp_path / "in"
    folder.mkdir()
    for index in range(4):
        (folder / f"t{index}.png").write_bytes(_png(index))
    with TritonServer(repository, ServerOptions(key="k" * 32, ready_timeout=240, drain_seconds=3)) as triton:
        server = ["--backend", "triton", "--url", triton.endpoints["grpc"], "--protocol", "grpc", "--no-progress"]
        assert main(["batch", str(folder), "--out", str(tmp_path / "batch"), "--address", cluster.address,
                     "--workers", "1", *server]) == 0
        assert main(["infer", str(folder), "--out", str(tmp_path / "infer"), *server]) == 0
    rows = _manifest(tmp_path / "batch")
    assert {r["status"] for r in rows} == {"done"} and "remote" in dict(rows[0]["timings"])
    for index in range(4):
        name = f"t{index}_alpha.png"
        assert (tmp_path / "batch" / name).read_bytes() == (tmp_path / "infer" / name).read_bytes(), name


# -- a full disk mid-job --------------------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs (needs root; else skipped)."""
    mount = tmp_path / "small"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {result.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


@needs_ray
def test_a_full_disk_stops_the_job_and_the_manifest_matches_the_files(cluster, tmp_path, small_disk):
    folder = tmp_path / "in"
    folder.mkdir()
    inputs = []
    for index in range(6):
        (folder / f"img{index}.png").write_bytes(_png(index))
        inputs.append(folder / f"img{index}.png")
    held = folder / "last.png"
    os.mkfifo(held)
    listing = tmp_path / "inputs.txt"
    listing.write_text("\n".join(map(str, [*inputs, held])))
    out = small_disk / "out"
    with _batch_in_background([listing, "--out", out, "--address", cluster.address, "--workers", 1],
                              tmp_path / "batch.log") as (process, deadline):
        writer = _open_writer(held, process, deadline)
        with open(small_disk / "filler", "wb") as filler, contextlib.suppress(OSError):  # fill the disk
            while True:
                filler.write(bytes(1 << 16))
                filler.flush()
        _feed_and_wait(writer, _png(6), process, deadline)
    log = (tmp_path / "batch.log").read_text()
    assert process.returncode == 1, log
    assert f"{out / 'last_alpha.png'}: could not be written (No space left on device)" in log
    assert "the job stopped (the disk is full)" in log
    # What the manifest (and any part files) records as done is on disk; nothing half-written.
    from mattrt.jobs.batch.manifest import Manifest

    for record in Manifest(out).load().values():
        if record["status"] == "done":
            assert os.stat(record["output"]).st_size == record["output_bytes"]
    assert not [p.name for p in out.iterdir() if p.name.endswith(".part")]
    # Space again: the rerun finishes the job and keeps what was done.
    (small_disk / "filler").unlink()
    held.unlink()
    held.write_bytes(_png(6))
    assert _batch(listing, "--out", out, "--address", cluster.address, "--workers", 1) == 0
    assert sorted(p.name for p in out.glob("*.png")) == sorted([f"img{i}_alpha.png" for i in range(6)] +
                                                               ["last_alpha.png"])


@needs_ray
def test_a_worker_that_opens_another_pipeline_than_planned_fails_the_job_cleanly(cluster, tmp_path, capsys,
                                                                                 monkeypatch):
    """As a node that joined after the probe with other libraries would: the actors refuse to
    start, Ray Data gives up after three replacements, and the error is mattrt's one line."""
    from mattrt.jobs.batch import job

    real = job.probe_nodes

    def planned_elsewhere(*args, **kwargs):
        return [{**probe, "settings_id": "0" * 16} for probe in real(*args, **kwargs)]

    monkeypatch.setattr(job, "probe_nodes", planned_elsewhere)
    (tmp_path / "a.png").write_bytes(_png(0))
    out = tmp_path / "out"
    assert _batch(tmp_path / "a.png", "--out", out, "--address", cluster.address, "--workers", 1) == 1
    err = capsys.readouterr().err
    last = [line for line in err.splitlines() if line.startswith("mattrt batch: error: ")][-1]
    assert "differs from the one the job was planned with" in last and "Traceback" not in last
    assert not list(out.glob("*.png")) and not (out / ".mattrt-manifest").exists()


# -- refused before any work (no cluster needed) ----------------------------------------------------------
@needs_ray
def test_an_unreachable_address_is_refused_at_once(tmp_path, capsys):
    (tmp_path / "a.png").write_bytes(_png(0))
    out = tmp_path / "out"
    port = free_port()  # nothing listens there
    started = time.monotonic()
    assert _batch(tmp_path / "a.png", "--out", out, "--address", f"127.0.0.1:{port}") == 1
    assert time.monotonic() - started < 10
    err = capsys.readouterr().err
    assert f"--address 127.0.0.1:{port}: no Ray cluster answers there (connection refused)" in err
    assert "nothing was processed" in err and not out.exists()
    assert _batch(tmp_path / "a.png", "--out", out, "--address", "head-node") == 1
    assert "is not an address: give HOST:PORT" in capsys.readouterr().err


@needs_ray
def test_an_unwritable_or_full_out_and_a_busy_out_are_refused_before_ray_starts(tmp_path, capsys, full_disk):
    from filelock import FileLock

    (tmp_path / "a.png").write_bytes(_png(0))
    assert _batch(tmp_path / "a.png", "--out", "/proc/batch") == 1
    assert "--out /proc/batch" in capsys.readouterr().err
    assert _batch(tmp_path / "a.png", "--out", full_disk) == 1
    assert f"--out {full_disk} has 0 bytes free" in capsys.readouterr().err
    busy = tmp_path / "busy"
    busy.mkdir()
    with FileLock(str(busy / ".mattrt-batch.lock")):
        assert _batch(tmp_path / "a.png", "--out", busy) == 1
    assert f"another mattrt batch job is writing into {busy}" in capsys.readouterr().err
    assert sorted(p.name for p in busy.iterdir()) == [".mattrt-batch.lock"]


def test_without_ray_the_error_names_the_extra(tmp_path, capsys, monkeypatch):
    (tmp_path / "a.png").write_bytes(_png(0))
    monkeypatch.setitem(availability._PROBES, "ray", lambda: availability.Probe(
        "ray", False, None, f"not installed; {availability.RAY_ADVICE}"))
    availability.probe.cache_clear()
    try:
        assert _batch(tmp_path / "a.png", "--out", tmp_path / "out") == 1
    finally:
        availability.probe.cache_clear()
    err = capsys.readouterr().err
    assert "mattrt batch needs ray, which is missing here: not installed; `pip install 'mattrt[batch]'`" in err
    assert not (tmp_path / "out").exists()


def test_the_parser_does_not_import_ray():
    code = ("import sys; from mattrt.cli import build_parser; build_parser(['--help']); "
            "build_parser(['batch', 'x', '--out', 'y']); print(sorted(m for m in ('ray', 'pyarrow') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], env=_environment(), capture_output=True, text=True,
                            timeout=120)
    assert result.stdout.strip() == "[]", result.stderr


# -- the pieces, without Ray ------------------------------------------------------------------------------
def test_write_bytes_once_accepts_an_identical_file_and_never_replaces_another(tmp_path):
    target = tmp_path / "a.png"
    assert write_bytes_once(target, b"pixels", tag="job1") is True
    assert write_bytes_once(target, b"pixels", tag="job1") is False  # what a retried task finds
    with pytest.raises(InputError, match="already exists with other content; pass --overwrite"):
        write_bytes_once(target, b"other pixels", tag="job1")
    assert target.read_bytes() == b"pixels" and sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]


def test_list_files_folders_and_uris_expand_in_order(tmp_path):
    pytest.importorskip("pyarrow")
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mattrt.jobs.batch.inputs import expand_inputs, plan_targets

    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("b.png", "a.png", "c.jpg"):
        (folder / name).write_bytes(b"x")
    (tmp_path / "list.txt").write_text("# a comment\n\nimages/b.png\n" + str(folder / "a.png") + "\n")
    (tmp_path / "list.csv").write_text("path\nimages/c.jpg\nimages/b.png\n")
    pq.write_table(pa.table({"path": [folder.as_uri() + "/a.png"]}), tmp_path / "list.parquet")
    (tmp_path / "wrong.csv").write_text("file\nimages/a.png\n")
    sources, failures = expand_inputs([str(tmp_path / "list.txt"), str(tmp_path / "list.csv"), str(folder),
                                       str(tmp_path / "list.parquet"), folder.as_uri()])
    assert sources == [str(folder / "b.png"), str(folder / "a.png"), str(folder / "c.jpg"), folder.as_uri() + "/a.png",
                       folder.as_uri() + "/b.png", folder.as_uri() + "/c.jpg"]
    assert not failures
    with pytest.raises(InputError, match="a CSV list needs a column named 'path' \\(it has: file\\)"):
        expand_inputs([str(tmp_path / "wrong.csv")])
    with pytest.raises(InputError, match="would both be written to"):
        plan_targets(sources, tmp_path / "out", "alpha")  # a.png as a path and as a URI
    _, failures = expand_inputs([(tmp_path / "nothing").as_uri()])
    assert failures[0].error.endswith("no such file or folder")


def test_resume_keeps_only_unchanged_outputs_done_with_the_same_settings(tmp_path):
    pytest.importorskip("pyarrow")
    from mattrt.jobs.batch.manifest import Manifest, now, plan_resume, settings_id, write_table

    settings = {"pipeline": {"tile_size": 64}, "options": {"output": "alpha"}}
    other = {"pipeline": {"tile_size": 32}, "options": {"output": "alpha"}}
    out = tmp_path / "out"
    out.mkdir()
    targets = {}
    records = []
    for name, status, chosen in (("kept", "done", settings), ("changed", "done", settings),
                                 ("failed", "failed", settings), ("other", "done", other)):
        target = out / f"{name}_alpha.png"
        target.write_bytes(name.encode())
        stat = target.stat()
        targets[name] = target
        records.append({"input": name, "output": str(target), "status": status, "output_bytes": stat.st_size,
                        "output_mtime_ns": stat.st_mtime_ns, "settings_id": settings_id(chosen),
                        "settings": json.dumps(chosen), "finished_at": now()})
    write_table(records, out / "manifest.parquet")
    targets["changed"].write_bytes(b"edited since")
    targets["new"] = out / "new_alpha.png"
    previous = Manifest(out).load()
    plan = plan_resume(targets, previous, settings, overwrite=False)
    assert [r["input"] for r in plan.skipped] == ["kept"]
    assert sorted(source for source, _ in plan.todo) == ["changed", "failed", "new"]
    assert [source for source, _ in plan.conflicts] == ["other"]
    assert len(plan_resume(targets, previous, settings, overwrite=True).todo) == 5
    # A part file left by a driver that died holds later records: they win.
    Manifest(out).start("dead")
    write_table([{**records[2], "status": "done", "finished_at": now()}], out / ".mattrt-manifest" / "part-dead-00000.parquet")
    manifest = Manifest(out)
    assert manifest.load()[("failed", str(targets["failed"]))]["status"] == "done"
    assert manifest.dead_jobs() == ["dead"]


def test_addresses_are_checked_before_ray_is_asked():
    from mattrt.jobs.batch.cluster import split_address

    assert split_address("auto") is None
    assert split_address("10.0.0.5:6379") == ("10.0.0.5", 6379)
    assert split_address("ray://head:10001") == ("head", 10001)
    for wrong in ("head", "head:port", "http://head:80/x", ":6379"):
        with pytest.raises(InputError, match="is not an address"):
            split_address(wrong)
