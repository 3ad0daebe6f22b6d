"""What runs inside Ray's worker processes: the per-node probe and the actor that mattes images.

`probe_node` opens the job's pipeline once on a node through the deployment chain (deploy/),
which makes what the node's artifact cache lacks (ONNX graphs, a precision variant, TensorRT
plans) before any actor needs it, and says what the pipeline runs: the settings that decide an
output's pixels (jobs/infer.run_settings), the mattrt version, the chain's log.

`BatchActor` is the class Ray Data's actor pool instantiates: one Pipeline per actor, opened in
the constructor (from the cache the probe filled) and checked against the settings the driver
planned with. Each call gets a few (input, output) rows and returns one manifest record per row:
it reads the input itself (a path or a URI: no pixels through the object store), runs the same
per-image computation as `mattrt infer` (jobs/infer.compute_image) and writes the output once
(mattrt.imagewrite.write_bytes_once): a file that already holds exactly those bytes, which is what
a retried task finds after a worker was lost, counts as written; a file with other content is
never replaced (unless --overwrite). A failing image becomes a `failed` record with infer's
message: a task never raises for an image, so Ray neither retries nor drops a block for one.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import time
from pathlib import Path

from mattrt import __version__
from mattrt.deploy.plan import DeploymentRequest, open_pipeline
from mattrt.errors import InputError
from mattrt.imagewrite import write_bytes, write_bytes_once
from mattrt.jobs.batch.inputs import read_source
from mattrt.jobs.batch.manifest import DONE, FAILED, IDENTICAL, REPLACED, WRITTEN, now, settings_id, table
from mattrt.jobs.infer import (
    IMAGE_ERRORS,
    InferOptions,
    check_options,
    compute_image,
    failure_message,
    finish_record,
    run_settings,
)
from mattrt.lazy import lazy_import
from mattrt.manifest import MANIFEST_FILE
from mattrt.models.checkpoints import file_sha256

ray = lazy_import("ray", probe="ray")

# Failures that are the disk's, not the image's: the driver stops the job on the first one.
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def _where() -> dict:
    context = ray.get_runtime_context()
    return {"node": context.get_node_id(), "host": ray.util.get_node_ip_address(), "pid": os.getpid()}


def job_settings(pipeline, request: DeploymentRequest, options: InferOptions) -> dict:
    """What decides an output's pixels: `mattrt infer`'s settings (jobs/infer.run_settings) plus the
    weights' identity (the SHA-256 of each checkpoint file, or of an export's manifest, which
    lists its graphs' hashes), so that a resume never keeps outputs of other weights."""
    weights: dict[str, str] = {}
    checkpoint = request.checkpoint
    if isinstance(checkpoint, (str, os.PathLike)):
        weights["checkpoint"] = file_sha256(checkpoint)
    elif isinstance(checkpoint, dict):
        weights.update({f"checkpoint {part}": file_sha256(path) for part, path in sorted(checkpoint.items())})
    if request.artifacts is not None:
        weights["export manifest"] = file_sha256(Path(request.artifacts) / MANIFEST_FILE)
    return {**run_settings(pipeline, options), **({"weights": weights} if weights else {})}


def probe_node(request: DeploymentRequest, options: InferOptions, marker: str) -> dict:
    """Open the job's pipeline on this node (module docstring) and describe it. `marker` is a
    file the driver made in OUT: a node that cannot see it would write its outputs elsewhere."""
    started = time.perf_counter()
    if not os.path.exists(marker):
        raise InputError(f"--out {Path(marker).parent.parent} is not visible from {_where()['host']}: on a cluster, "
                         "--out must be a folder every node shares (a network file system) at the same path")
    lines: list[str] = []
    check_options(options)
    pipeline = open_pipeline(request, log=lines.append)
    try:
        settings = job_settings(pipeline, request, options)
        trained = bool(pipeline.spec.trained)
    finally:
        pipeline.close()
    return {**_where(), "mattrt": __version__, "settings": settings, "settings_id": settings_id(settings),
            "trained": trained, "log": lines, "seconds": round(time.perf_counter() - started, 3)}


class BatchActor:
    """One pipeline per Ray actor (module docstring)."""

    def __init__(self, request: DeploymentRequest, options: InferOptions, expected_settings: str, job_id: str):
        self.options, self.job_id = options, job_id
        self.background = check_options(options)
        self.where = _where()
        self.pipeline = open_pipeline(request, log=None)
        self.pipeline.__enter__()
        settings = job_settings(self.pipeline, request, options)
        if settings_id(settings) != expected_settings:
            self.pipeline.close()
            raise InputError(f"the pipeline opened on {self.where['host']} (node {self.where['node'][:12]}) differs "
                             f"from the one the job was planned with: {json.dumps(settings, sort_keys=True)}; a node "
                             "that joined later must run the same backend, versions and model")
        self.settings = json.dumps(settings, sort_keys=True)
        self.settings_id = expected_settings

    def __call__(self, batch: dict):
        records = [self.process(str(source), Path(str(target))) for source, target in zip(batch["input"], batch["output"])]
        return table(records)

    def process(self, source: str, target: Path) -> dict:
        started = time.perf_counter()
        record = {"input": source, "output": str(target), **self.where, "job_id": self.job_id,
                  "settings_id": self.settings_id, "settings": self.settings}
        try:
            matted = compute_image(self.pipeline, source, target, self.options, self.background, read=read_source,
                                   started=started)
            step = time.perf_counter()
            if self.options.overwrite:
                existed = os.path.lexists(target)
                write_bytes(target, matted.data, overwrite=True, tag=self.job_id)
                note = REPLACED if existed else WRITTEN
            else:
                note = WRITTEN if write_bytes_once(target, matted.data, tag=self.job_id) else IDENTICAL
            done = finish_record(matted, time.perf_counter() - step)
            record.update(done, status=DONE, note=note, seconds=done["timings"]["total"],
                          output_bytes=len(matted.data), output_mtime_ns=os.stat(target).st_mtime_ns,
                          output_sha256=hashlib.sha256(matted.data).hexdigest())
        except IMAGE_ERRORS as exc:
            record.update(status=FAILED, error=failure_message(exc), errno=_errno(exc))
        record["finished_at"] = now()
        return record


def _errno(exc: BaseException) -> int | None:
    """The OS error number behind a failure (a write's OSError is wrapped in an InputError)."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno is not None:
            return exc.errno
        exc = exc.__cause__
    return None


__all__ = ["BatchActor", "DISK_FULL_ERRNOS", "job_settings", "probe_node"]
