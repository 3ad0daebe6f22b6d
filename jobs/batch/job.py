"""The driver of a batch job: plan, connect, probe, resume, run on Ray Data, record, summarise.

Order (every check that can fail comes before any image is run):
1. the options (as `mattrt infer` checks them), the inputs expanded (jobs/batch/inputs.py) and
   the outputs planned (infer's names; collisions and outputs on inputs refused);
2. with --address, the address tried (nothing listening: refused at once);
3. OUT created if needed and proved writable, with free space; OUT's lock taken (one job per
   OUT); the temporary files of a job that died there removed;
4. Ray started or reached (jobs/batch/cluster.py); one probe per node that can hold an actor opens
   the pipeline there (filling that node's artifact cache once) and reports its settings: nodes
   must agree (one job, one configuration) and must see OUT;
5. resume (jobs/batch/manifest.py): done with the same settings and unchanged: skipped; done with
   other settings: refused unless --overwrite; the rest runs;
6. Ray Data: the rows (input, output) from the driver's list, mapped through an actor pool of
   --workers BatchActors (jobs/batch/worker.py) with --cpus-per-worker / --gpus-per-worker each,
   --images-per-task rows per task (the unit Ray retries); records streamed back, written to
   manifest parts every few seconds;
7. the manifest compacted, the summary printed by the command.

Exactly once, with Ray's retries (a killed worker process or actor is restarted and its
unfinished tasks run again, Ray Data's default for actor pools): every submitted image has
exactly one record in the manifest (the driver keeps the first record per input and checks at the
end that none is missing: a missing one fails the job loudly); every output is created once,
under its final name, all or nothing, by a hard link that fails if the name exists; a retried
task that recomputes an image finds the identical file and records "identical output already
present" rather than writing it again; a file with other content is never replaced (without
--overwrite). A failure of the disk (no space) stops the job: the manifest then lists only files
that exist, and the next run redoes the rest.
"""

from __future__ import annotations

import collections
import contextlib
import shutil
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from filelock import FileLock, Timeout

from mattrt import availability
from mattrt.deploy.plan import DeploymentRequest
from mattrt.errors import InputError, MattrtError
from mattrt.jobs.batch.cluster import (
    actor_nodes,
    check_reachable,
    configure_data,
    connected,
    probe_nodes,
    runtime_env,
    task_error,
)
from mattrt.jobs.batch.inputs import expand_inputs, plan_targets
from mattrt.jobs.batch.manifest import (
    DONE,
    FAILED,
    IDENTICAL,
    Manifest,
    conflict_message,
    failure_record,
    key,
    plan_resume,
)
from mattrt.jobs.batch.worker import DISK_FULL_ERRNOS, BatchActor
from mattrt.jobs.infer import InferOptions, check_options, check_writable, setting_differences
from mattrt.lazy import lazy_import
from mattrt.runtime.threads import available_cores

ray_data = lazy_import("ray.data", probe="ray")

LOCK_NAME = ".mattrt-batch.lock"
MIN_FREE_BYTES = 1 << 20
Log = Callable[[str], None]


@dataclass
class BatchOptions:
    address: str | None = None  # None: an embedded Ray on this machine
    workers: int | None = None  # actors; None: as many as the nodes' CPUs (and GPUs) hold
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    images_per_task: int = 1
    progress: bool | None = None  # None: Ray Data's progress bars when stderr is a terminal
    flush_seconds: float = 2.0  # how often records reach the manifest's part files


class DiskFull(InputError):
    """An output could not be written for lack of space: the job stops."""


def run_batch(request: DeploymentRequest, specs: Sequence[str], out_dir: str | Path, options: InferOptions,
              batch: BatchOptions, log: Log | None = None) -> dict:
    """Run the job (module docstring); returns the summary."""
    log = log or (lambda message: print(message, file=sys.stderr))
    availability.require("ray", "mattrt batch")
    check_options(options)
    if options.skip_existing:
        raise InputError("mattrt batch always resumes (outputs its manifest records as done are kept): drop "
                         "--skip-existing")
    _check_batch_options(batch)
    started = time.perf_counter()
    out_dir = Path(out_dir).absolute()
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"--out {out_dir} exists and is not a folder")
    sources, failures = expand_inputs(specs)
    targets = plan_targets(sources, out_dir, options.output)
    manifest = Manifest(out_dir)
    if batch.address is not None:
        check_reachable(batch.address)
    created: list[Path] = []
    lock = FileLock(str(out_dir / LOCK_NAME))
    try:
        check_writable(out_dir, "--out", created)
        free = shutil.disk_usage(out_dir).free
        if free < MIN_FREE_BYTES:
            raise InputError(f"--out {out_dir} has {free} bytes free; free some space or choose another --out; "
                             "nothing was processed")
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise InputError(f"another mattrt batch job is writing into {out_dir} (it holds {out_dir / LOCK_NAME}); "
                             "wait for it to finish or choose another --out") from None
    except InputError:
        _remove_created(created, out_dir / LOCK_NAME)
        raise
    try:
        for dead in manifest.dead_jobs():
            swept = manifest.sweep(dead)
            if swept:
                log(f"removed {swept} temporary file(s) left by an earlier job that stopped ({dead})")
        previous = manifest.load()
        return _run(request, sources, failures, targets, manifest, previous, options, batch, log, started)
    except _NothingRun as stopped:
        lock.release()
        _remove_created(created, out_dir / LOCK_NAME)
        raise stopped.error from None
    finally:
        lock.release()


class _NothingRun(Exception):
    """A failure before any image ran: the folders the job created are removed again."""

    def __init__(self, error: BaseException):
        super().__init__(str(error))
        self.error = error


def _remove_created(created: list[Path], lock_file: Path) -> None:
    if not created:
        return
    with contextlib.suppress(OSError):
        lock_file.unlink()
    for folder in reversed(created):
        with contextlib.suppress(OSError):
            folder.rmdir()


def _check_batch_options(batch: BatchOptions) -> None:
    if batch.workers is not None and batch.workers < 1:
        raise InputError(f"--workers must be at least 1, got {batch.workers}")
    if not batch.cpus_per_worker > 0 or batch.gpus_per_worker < 0:
        raise InputError("--cpus-per-worker must be positive and --gpus-per-worker zero or more")
    if batch.images_per_task < 1:
        raise InputError(f"--images-per-task must be at least 1, got {batch.images_per_task}")


def _run(request, sources, failures, targets, manifest: Manifest, previous, options, batch: BatchOptions, log,
         started) -> dict:
    job_id = uuid.uuid4().hex[:12]
    manifest.start(job_id)
    marker = str(manifest.parts_dir / f"job-{job_id}")
    records: dict[tuple[str, str], dict] = {}
    for failure in failures:  # specs that named nothing
        record = failure_record(failure.input, failure.error, job_id=job_id)
        records[key(record)] = record
    summary: dict = {"job_id": job_id}
    parts: list[Path] = []
    interrupted = False
    planned = False
    try:
        with connected(batch.address, num_cpus=available_cores(), log=log) as worker_pids:
            try:
                nodes = actor_nodes(batch.cpus_per_worker, batch.gpus_per_worker)
                workers = _workers(nodes, batch)
                probes = probe_nodes(nodes, request, options, marker, cpus=batch.cpus_per_worker,
                                     gpus=batch.gpus_per_worker)
                worker_pids.update(probe["pid"] for probe in probes)
                settings = _agreed_settings(probes, log)
                plan = plan_resume(targets, previous, settings, options.overwrite)
                if plan.conflicts:
                    raise InputError(conflict_message(manifest.path, plan.conflicts, settings))
            except MattrtError as exc:
                raise _NothingRun(exc) from None
            planned = True
            summary.update(workers=workers, nodes=len(nodes), startup_seconds=round(time.perf_counter() - started, 3))
            if plan.skipped:
                log(f"{len(plan.skipped)} image(s) already done with these settings (recorded in {manifest.path}): "
                    "skipped")
            job_started = time.perf_counter()
            try:
                if plan.todo:
                    _stream(plan.todo, request, options, batch, workers, probes[0]["settings_id"], job_id,
                            manifest, records, parts, log)
            except KeyboardInterrupt:
                interrupted = True
            finally:
                worker_pids.update(r["pid"] for r in records.values() if r.get("pid"))
            summary["job_seconds"] = round(time.perf_counter() - job_started, 3)
    except MattrtError as exc:
        if not planned:  # Ray could not be started or reached
            raise _NothingRun(exc) from None
        raise
    finally:
        problem = _finish(manifest, previous, records, parts, job_id) if planned else _forget(manifest, job_id)
        if problem is not None and sys.exc_info()[0] is not None:
            log(problem)  # the job already fails for another reason, which is the one reported
    if interrupted:
        done = sum(r["status"] == DONE for r in records.values())
        log(problem or f"interrupted: {done} image(s) finished, recorded in {manifest.path}")
        raise KeyboardInterrupt
    if problem is not None:
        raise InputError(problem)
    submitted = {str(source) for source, _ in plan.todo}
    missing = sorted(submitted - {r["input"] for r in records.values()})
    if missing:
        raise MattrtError(f"{len(missing)} image(s) were submitted but never reported by the workers (first: "
                          f"{missing[0]}); the manifest has the others; rerun to finish them")
    return _summary(summary, records, plan, manifest, started, probes)


def _workers(nodes: list[dict], batch: BatchOptions) -> int:
    fits = sum(node["fits"] for node in nodes)
    wanted = f"{batch.cpus_per_worker:g} CPU(s)" + (f" and {batch.gpus_per_worker:g} GPU(s)" if batch.gpus_per_worker
                                                     else "")
    if not nodes:
        raise InputError(f"no node of the Ray cluster has {wanted} for one worker; lower --cpus-per-worker or "
                         "--gpus-per-worker")
    if batch.workers is not None and batch.workers > fits:
        raise InputError(f"--workers {batch.workers} needs {wanted} each, and the Ray cluster holds {fits} such "
                         f"worker(s); use --workers {fits} or fewer")
    return batch.workers or fits


def _agreed_settings(probes: list[dict], log: Log) -> dict:
    first = probes[0]
    for line in first["log"]:
        log(line)
    if not first["trained"]:
        log(f"warning: model {first['settings']['pipeline'].get('model')!r} runs with untrained weights (no "
            "checkpoint): the mattes are not meaningful")
    for other in probes[1:]:
        if other["mattrt"] != first["mattrt"]:
            raise InputError(f"the nodes run different mattrt versions ({first['host']}: {first['mattrt']}, "
                             f"{other['host']}: {other['mattrt']}); install one version everywhere")
        if other["settings_id"] != first["settings_id"]:
            raise InputError(f"the nodes would make different outputs ({first['host']} -> {other['host']}: "
                             f"{setting_differences(first['settings'], other['settings'])}); one job must run one "
                             "configuration: pin --backend/--device, or give nodes the same hardware and libraries")
    return first["settings"]


def _stream(todo, request, options, batch: BatchOptions, workers: int, settings_id: str, job_id: str,
            manifest: Manifest, records: dict, parts: list[Path], log) -> None:
    """Run the images through Ray Data; records go into `records` (the first per input) and into
    manifest parts (appended to `parts`) as they arrive."""
    progress = sys.stderr.isatty() if batch.progress is None else batch.progress
    configure_data(progress)
    rows = [{"input": source, "output": str(target)} for source, target in todo]
    blocks = -(-len(rows) // batch.images_per_task)
    workers = min(workers, blocks)  # an actor without a task would only cost its start
    dataset = ray_data.from_items(rows, override_num_blocks=blocks).map_batches(
        BatchActor,
        fn_constructor_kwargs={"request": request, "options": options, "expected_settings": settings_id,
                               "job_id": job_id},
        batch_size=batch.images_per_task,
        batch_format="numpy",
        compute=ray_data.ActorPoolStrategy(size=workers),
        num_cpus=batch.cpus_per_worker,
        num_gpus=batch.gpus_per_worker or None,
        runtime_env=runtime_env(),
    )
    pending: list[dict] = []
    last_flush = time.monotonic()
    duplicates = 0
    log(f"running {len(rows)} image(s) on {workers} worker(s)")

    def flush() -> None:
        nonlocal pending, last_flush
        if pending:
            parts.append(manifest.write_part(pending, job_id, len(parts)))
            pending = []
        last_flush = time.monotonic()

    try:
        for row in dataset.iter_rows():
            record = dict(row)
            if isinstance(record.get("timings"), list):
                record["timings"] = dict(record["timings"])
            if key(record) in records:
                duplicates += 1  # only a successful attempt's block reaches the driver; kept as a check
                continue
            records[key(record)] = record
            pending.append(record)
            if record["status"] == FAILED and record.get("errno") in DISK_FULL_ERRNOS:
                raise DiskFull(f"{record['error']}; the job stopped (the disk is full): free space and run it again "
                               "to do the rest")
            if time.monotonic() - last_flush > batch.flush_seconds:
                flush()  # a part that cannot be written stops the job
        flush()
    except (MattrtError, KeyboardInterrupt):
        raise
    except Exception as exc:  # Ray's and Ray Data's failures (an actor that cannot start, a lost driver connection)
        raise task_error(exc, "the Ray job failed") from None
    if duplicates:
        log(f"note: {duplicates} duplicate record(s) from retried tasks were dropped")


def _finish(manifest: Manifest, previous, records: dict, parts: list[Path], job_id: str) -> str | None:
    """Compact the manifest, remove this job's temporary files and marker (also after a failure);
    returns what went wrong, if anything. Records that reach no file are redone by the next run,
    which finds their outputs (if any) identical."""
    try:
        manifest.compact(previous, records.values(), parts)
    except (InputError, OSError) as exc:
        _forget(manifest, job_id)
        return (f"the manifest was not written: {exc}; outputs that were written stay, and the next run finds "
                "them (it recomputes them and keeps them when identical)")
    return _forget(manifest, job_id)


def _forget(manifest: Manifest, job_id: str) -> None:
    manifest.sweep(job_id)
    with contextlib.suppress(OSError):
        manifest.parts_dir.rmdir()


def _summary(summary: dict, records: dict, plan, manifest: Manifest, started: float, probes: list[dict]) -> dict:
    rows = list(records.values())
    done = [r for r in rows if r["status"] == DONE]
    failed = [r for r in rows if r["status"] == FAILED]
    seconds = summary.get("job_seconds") or 0.0
    by_host = collections.Counter(r.get("host") for r in done)
    totals: dict[str, float] = {}
    for record in done:
        for step, value in (record.get("timings") or {}).items():
            totals[step] = totals.get(step, 0.0) + value
    summary.update(
        images=len(rows) + len(plan.skipped),
        processed=len(done),
        skipped=len(plan.skipped),
        failed=len(failed),
        identical=sum(r.get("note") == IDENTICAL for r in done),
        seconds=round(time.perf_counter() - started, 3),
        images_per_second=round(len(done) / seconds, 4) if seconds and done else None,
        seconds_by_step={k: round(v, 3) for k, v in totals.items()},
        by_host=dict(by_host),
        settings=probes[0]["settings"],
        manifest=str(manifest.path),
        failures=[{"input": r["input"], "error": r["error"]} for r in failed],
    )
    return summary


__all__ = ["BatchOptions", "DiskFull", "run_batch"]
