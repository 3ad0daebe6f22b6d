"""The manifest of a batch job's output folder: one Parquet row per image, what resume reads.

OUT/manifest.parquet holds the latest record of every (input, output) pair ever run into OUT:
its status (`done` or `failed`), the error (the message `mattrt infer` gives for the same
input), how the output came to be (`note`: written, replaced, or "identical output already
present"), the output's size, modification time and SHA-256, the per-step timings, the settings
that decide its pixels (`settings`, JSON, and their hash `settings_id`), and the node, process and
job that made it. COLUMNS lists them.

While a job runs, the driver appends its records to part files in OUT/.mattrt-manifest/ (each
written whole, every few seconds) and at the end merges them with the earlier manifest into a
new manifest.parquet (written whole, then renamed over the old one) and removes the parts. A
driver that dies leaves its parts; the next run reads them like the manifest. The folder also
holds one marker per running job (`job-<id>`): a marker the next run finds belongs to a job that
died, whose temporary output files (`.<name>.<id>.<random>.part`) it removes.

Resume (`plan_resume`): a pair whose latest record is `done` with the same settings, and whose
output is still the file that record describes (size and modification time), is skipped; a pair
done with other settings is a conflict (an error unless --overwrite); everything else is run.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

from mattrt.errors import InputError
from mattrt.imagewrite import write_bytes
from mattrt.jobs.infer import setting_differences
from mattrt.lazy import lazy_import

pa = lazy_import("pyarrow", probe="ray")
pq = lazy_import("pyarrow.parquet", probe="ray")

MANIFEST_NAME = "manifest.parquet"
PARTS_FOLDER = ".mattrt-manifest"
DONE, FAILED = "done", "failed"
WRITTEN, REPLACED, IDENTICAL = "written", "replaced", "identical output already present"

# name -> (Arrow type name, meaning). Types are made by _arrow_type (pyarrow is imported lazily).
COLUMNS: dict[str, tuple[str, str]] = {
    "input": ("string", "the input: an absolute path or a URI (for a spec that named nothing: the spec)"),
    "output": ("string", "the output file (null when the input named nothing)"),
    "status": ("string", "done or failed"),
    "error": ("string", "why it failed: the message `mattrt infer` gives"),
    "errno": ("int64", "the OS error number behind a failure, if any (28: no space left on device)"),
    "note": ("string", "written, replaced (--overwrite), or identical output already present (a retried task)"),
    "width": ("int64", "image width"),
    "height": ("int64", "image height"),
    "bit_depth": ("int64", "the input's bit depth"),
    "format": ("string", "the input's format (PNG, JPEG, ...)"),
    "mode": ("string", "the input's stored mode (RGB, CMYK, P, I;16, ...)"),
    "orientation": ("int64", "EXIF orientation applied"),
    "input_alpha": ("string", "how the input's own alpha channel was treated (null: it had none)"),
    "tiles": ("int64", "detail tiles run"),
    "timings": ("map", "seconds per step: read, the pipeline's stages, foreground, write, total"),
    "seconds": ("float64", "the image's total seconds"),
    "output_bytes": ("int64", "the output's size"),
    "output_mtime_ns": ("int64", "the output's modification time (resume checks it is still the same file)"),
    "output_sha256": ("string", "the output's SHA-256"),
    "settings_id": ("string", "hash of `settings`"),
    "settings": ("string", "what decides the output's pixels (JSON; jobs/infer.run_settings)"),
    "node": ("string", "the Ray node that made it"),
    "host": ("string", "that node's address"),
    "pid": ("int64", "the worker process"),
    "job_id": ("string", "the batch job"),
    "finished_at": ("timestamp", "when the record was made (UTC)"),
}


def _arrow_type(name: str):
    if name == "map":
        return pa.map_(pa.string(), pa.float64())
    if name == "timestamp":
        return pa.timestamp("ms", tz="UTC")
    return getattr(pa, name)()


def schema():
    return pa.schema([(name, _arrow_type(kind)) for name, (kind, _) in COLUMNS.items()])


def settings_id(settings: Mapping) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def failure_record(source: str, error: str, *, output: str | None = None, job_id: str = "", **fields) -> dict:
    return {"input": source, "output": output, "status": FAILED, "error": error, "job_id": job_id,
            "finished_at": now(), **fields}


def key(record: Mapping) -> tuple[str, str]:
    return str(record["input"]), str(record.get("output") or "")


def table(records: Iterable[Mapping]):
    """An Arrow table of records in the manifest's schema (missing fields are null)."""
    names = list(COLUMNS)
    rows = []
    for record in records:
        row = {name: record.get(name) for name in names}
        if isinstance(row["timings"], str):
            row["timings"] = json.loads(row["timings"])
        if isinstance(row["finished_at"], (int, float)):
            row["finished_at"] = datetime.datetime.fromtimestamp(row["finished_at"], datetime.timezone.utc)
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=schema())


def write_table(records: Iterable[Mapping], path: Path) -> None:
    """All or nothing: the file is written beside `path` and renamed over it."""
    sink = pa.BufferOutputStream()
    pq.write_table(table(records), sink)
    write_bytes(path, sink.getvalue().to_pybytes(), overwrite=True)


def read_records(path: Path) -> list[dict]:
    try:
        rows = pq.read_table(path).to_pylist()
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"{path} is not a readable batch manifest ({str(exc).splitlines()[0]}); move it away "
                         "or choose another --out") from None
    for row in rows:
        if isinstance(row.get("timings"), list):
            row["timings"] = dict(row["timings"])
        if "input" not in row or "status" not in row:
            raise InputError(f"{path} is not a batch manifest (no input/status columns); move it away or choose "
                             "another --out")
    return rows


@dataclass
class Manifest:
    """OUT's manifest and the part files of running (or dead) jobs (module docstring)."""

    out_dir: Path
    parts_read: list[Path] = field(default_factory=list)

    @property
    def path(self) -> Path:
        return self.out_dir / MANIFEST_NAME

    @property
    def parts_dir(self) -> Path:
        return self.out_dir / PARTS_FOLDER

    def load(self) -> dict[tuple[str, str], dict]:
        """The latest record per (input, output) from the manifest and any part files."""
        rows: list[dict] = []
        if self.path.exists():
            rows += read_records(self.path)
        self.parts_read = sorted(self.parts_dir.glob("part-*.parquet")) if self.parts_dir.is_dir() else []
        for part in self.parts_read:
            rows += read_records(part)
        latest: dict[tuple[str, str], dict] = {}
        epoch = datetime.datetime.min.replace(tzinfo=datetime.timezone.utc)
        for row in rows:
            previous = latest.get(key(row))
            if previous is None or (row.get("finished_at") or epoch) >= (previous.get("finished_at") or epoch):
                latest[key(row)] = row
        return latest

    def dead_jobs(self) -> list[str]:
        """Job ids whose markers are left (call while holding OUT's lock: no other job runs)."""
        if not self.parts_dir.is_dir():
            return []
        return sorted(marker.name[len("job-"):] for marker in self.parts_dir.glob("job-*"))

    def sweep(self, job_id: str) -> int:
        """Remove the temporary output files of a job (and its marker); returns how many."""
        removed = 0
        for temporary in self.out_dir.glob(f".*.{job_id}.*.part"):
            with contextlib.suppress(FileNotFoundError):
                temporary.unlink()
                removed += 1
        with contextlib.suppress(FileNotFoundError):
            (self.parts_dir / f"job-{job_id}").unlink()
        return removed

    def start(self, job_id: str) -> None:
        self.parts_dir.mkdir(exist_ok=True)
        (self.parts_dir / f"job-{job_id}").touch()

    def write_part(self, records: list[dict], job_id: str, index: int) -> Path:
        path = self.parts_dir / f"part-{job_id}-{index:05d}.parquet"
        write_table(records, path)
        return path

    def compact(self, previous: Mapping[tuple[str, str], dict], records: Iterable[dict], parts: Iterable[Path]) -> None:
        """Write the merged manifest (the earlier records, overridden by this job's), then remove
        the part files it now holds."""
        merged = dict(previous)
        for record in records:
            merged[key(record)] = record
        write_table([merged[k] for k in sorted(merged)], self.path)
        for part in [*self.parts_read, *parts]:
            with contextlib.suppress(FileNotFoundError):
                part.unlink()


@dataclass
class ResumePlan:
    todo: list[tuple[str, Path]]  # (source, target) to run
    skipped: list[dict]  # earlier records kept
    conflicts: list[tuple[str, dict]]  # done earlier with other settings


def plan_resume(targets: Mapping[str, Path], previous: Mapping[tuple[str, str], dict], settings: Mapping,
                overwrite: bool) -> ResumePlan:
    """Which pairs to skip, run or refuse (module docstring)."""
    current = settings_id(settings)
    plan = ResumePlan([], [], [])
    for source, target in targets.items():
        record = previous.get((source, str(target)))
        if overwrite or record is None or record.get("status") != DONE:
            plan.todo.append((source, target))
        elif record.get("settings_id") != current:
            plan.conflicts.append((source, record))
        elif _unchanged(target, record):
            plan.skipped.append(record)
        else:  # removed or changed since: run (an output someone changed is then refused, never replaced)
            plan.todo.append((source, target))
    return plan


def conflict_message(manifest: Path, conflicts: list[tuple[str, dict]], settings: Mapping) -> str:
    source, record = conflicts[0]
    try:
        earlier = json.loads(record.get("settings") or "{}")
    except ValueError:
        earlier = {}
    more = f" (and {len(conflicts) - 1} more)" if len(conflicts) > 1 else ""
    return (f"{manifest} records {source}{more} as done with other settings ({setting_differences(earlier, settings)}); "
            "pass --overwrite to redo them, or choose another --out")


def _unchanged(target: Path, record: Mapping) -> bool:
    try:
        stat = os.stat(target)
    except OSError:
        return False
    return stat.st_size == record.get("output_bytes") and stat.st_mtime_ns == record.get("output_mtime_ns")


__all__ = ["COLUMNS", "DONE", "FAILED", "IDENTICAL", "MANIFEST_NAME", "Manifest", "PARTS_FOLDER", "REPLACED",
           "ResumePlan", "WRITTEN", "conflict_message", "failure_record", "key", "plan_resume", "read_records",
           "now", "schema", "settings_id", "table", "write_table"]
