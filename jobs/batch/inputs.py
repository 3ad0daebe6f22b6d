"""What a batch job reads: the INPUT specs expanded into sources, their output names, and the
reader the workers use.

A spec is
- a local file, folder (its image files, not recursive) or glob pattern, as for `mattrt infer`
  (jobs/infer.collect_inputs);
- a list file, local or a URI, by its suffix: `.txt` (one path or URI per line; blank lines and
  lines starting with `#` are skipped), `.csv` or `.parquet` (a column named `path`). Entries are
  image files; a relative entry is relative to the list's own folder;
- a URI that pyarrow's filesystems open (`s3://bucket/key.png`, `gs://...`, `file:///...`,
  `hdfs://...`): an image, or a folder whose image files are listed (not recursive).

Sources are strings: an absolute local path (workers run in other folders, on other machines)
or a URI. The driver reads list files and lists folders; the workers read the images themselves
(no pixels travel through Ray's object store), with the same decoder as `mattrt infer`.
"""

from __future__ import annotations

import posixpath
from pathlib import Path, PurePosixPath
from typing import Sequence
from urllib.parse import urlsplit, urlunsplit

from mattrt.errors import InputError
from mattrt.imageio import IMAGE_SUFFIXES, LoadedImage, decode_image, read_image
from mattrt.jobs.infer import Failure, collect_inputs, plan_outputs, real_path
from mattrt.lazy import lazy_import

pa = lazy_import("pyarrow", probe="ray")
pafs = lazy_import("pyarrow.fs", probe="ray")
pacsv = lazy_import("pyarrow.csv", probe="ray")
pq = lazy_import("pyarrow.parquet", probe="ray")

LIST_SUFFIXES = (".txt", ".csv", ".parquet")
LIST_COLUMN = "path"


def is_uri(source: str) -> bool:
    return "://" in source


def expand_inputs(specs: Sequence[str]) -> tuple[list[str], list[Failure]]:
    """Sources named by the specs (module docstring), in the order given, without duplicates,
    and a failure for each spec that names nothing."""
    sources: list[str] = []
    failures: list[Failure] = []
    seen: set[str] = set()

    def add(source: str) -> None:
        key = source if is_uri(source) else str(real_path(Path(source)))
        if key not in seen:
            seen.add(key)
            sources.append(source)

    for spec in specs:
        suffix = PurePosixPath(urlsplit(spec).path if is_uri(spec) else spec).suffix.lower()
        if suffix in LIST_SUFFIXES and (is_uri(spec) or Path(spec).is_file()):
            entries = read_list(spec)
            if not entries:
                failures.append(Failure(spec, f"list {spec} names no images"))
            for entry in entries:
                add(entry)
        elif is_uri(spec):
            images, failure = _uri_images(spec)
            if failure:
                failures.append(Failure(spec, failure))
            for image in images:
                add(image)
        else:
            found, missing = collect_inputs([spec])
            failures.extend(missing)
            for path in found:
                add(_absolute(path))
    return sources, failures


def read_list(spec: str) -> list[str]:
    """The entries of a list file (module docstring), relative ones joined to its folder."""
    suffix = PurePosixPath(urlsplit(spec).path if is_uri(spec) else spec).suffix.lower()
    try:
        if is_uri(spec):
            filesystem, inner = pafs.FileSystem.from_uri(spec)
        else:
            filesystem, inner = pafs.LocalFileSystem(), str(Path(spec).resolve())
        if suffix == ".txt":
            with filesystem.open_input_stream(inner) as stream:
                text = stream.read().decode("utf-8")
            entries = [line.strip() for line in text.splitlines()]
            entries = [line for line in entries if line and not line.startswith("#")]
        else:
            if suffix == ".csv":
                with filesystem.open_input_stream(inner) as stream:
                    table = pacsv.read_csv(stream)
            else:
                table = pq.read_table(inner, filesystem=filesystem)
            if LIST_COLUMN not in table.column_names:
                raise InputError(f"{spec}: a {suffix[1:].upper()} list needs a column named {LIST_COLUMN!r} (it has: "
                                 f"{', '.join(table.column_names) or 'no columns'})")
            entries = [str(value).strip() for value in table.column(LIST_COLUMN).to_pylist() if value is not None]
            entries = [entry for entry in entries if entry]
    except UnicodeDecodeError:
        raise InputError(f"{spec}: a .txt list must be UTF-8 text, one path or URI per line") from None
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"{spec}: the list cannot be read ({_first_line(exc)})") from None
    return [_joined(spec, entry) for entry in entries]


def _joined(list_spec: str, entry: str) -> str:
    if is_uri(entry):
        return entry
    if is_uri(list_spec):
        if entry.startswith("/"):
            raise InputError(f"{list_spec}: the entry {entry!r} is a local absolute path in a list read from a URI; "
                             "give URIs (or paths relative to the list)")
        parts = urlsplit(list_spec)
        return urlunsplit(parts._replace(path=posixpath.join(posixpath.dirname(parts.path), entry)))
    path = Path(entry)
    return _absolute(path if path.is_absolute() else Path(list_spec).parent / path)


def _absolute(path: Path) -> str:
    """The path made absolute without following links (the output keeps the name given)."""
    return str(Path(path).absolute())


def _uri_images(uri: str) -> tuple[list[str], str | None]:
    """The image URIs a URI names: itself, or a folder's image files."""
    try:
        filesystem, inner = pafs.FileSystem.from_uri(uri)
        info = filesystem.get_file_info(inner)
        if info.type == pafs.FileType.NotFound:
            return [], f"{uri}: no such file or folder"
        if info.type != pafs.FileType.Directory:
            return [uri], None
        listed = filesystem.get_file_info(pafs.FileSelector(inner, recursive=False))
    except (OSError, pa.ArrowException) as exc:
        return [], f"{uri}: cannot be opened ({_first_line(exc)})"
    parts = urlsplit(uri)
    images = sorted(entry.path for entry in listed if entry.type == pafs.FileType.File
                    and PurePosixPath(entry.path).suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        return [], f"folder {uri} holds no {', '.join(IMAGE_SUFFIXES)} files"
    base = parts.path.rstrip("/")
    return [urlunsplit(parts._replace(path=f"{base}/{PurePosixPath(image).name}")) for image in images], None


def stem(source: str) -> str:
    """The name an output is derived from: the file name without its suffix."""
    return PurePosixPath(urlsplit(source).path).stem if is_uri(source) else Path(source).stem


def plan_targets(sources: Sequence[str], out_dir: Path, kind: str) -> dict[str, Path]:
    """source -> output path (`<stem>_<kind>.png`, as `mattrt infer` names it); refuses outputs
    that land on an input or on each other, with infer's messages."""
    local = [Path(s) for s in sources if not is_uri(s)]
    planned = plan_outputs(local, out_dir, kind)
    targets = {str(source): target for source, target in planned.items()}
    claimed = {real_path(target): str(source) for source, target in planned.items()}
    for source in (s for s in sources if is_uri(s)):
        target = out_dir / f"{stem(source)}_{kind}.png"
        key = real_path(target)
        if key in claimed:
            raise InputError(f"inputs {claimed[key]} and {source} would both be written to {target}; "
                             "run them separately or rename one")
        claimed[key] = source
        targets[source] = target
    return {source: targets[source] for source in sources}


def read_source(source: str, *, max_pixels: int | None) -> LoadedImage:
    """Read an image from a local path (mattrt.imageio.read_image, as `mattrt infer` does) or a
    URI (its bytes through pyarrow, decoded by the same decoder)."""
    if not is_uri(source):
        return read_image(source, max_pixels=max_pixels)
    try:
        filesystem, inner = pafs.FileSystem.from_uri(source)
        with filesystem.open_input_stream(inner) as stream:
            data = stream.read()
    except FileNotFoundError:
        raise InputError(f"{source}: no such file") from None
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"{source}: cannot be read ({_first_line(exc)})") from None
    if not data:
        raise InputError(f"{source}: the file is empty")
    return decode_image(data, name=source, max_pixels=max_pixels)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


__all__ = ["LIST_COLUMN", "LIST_SUFFIXES", "expand_inputs", "is_uri", "plan_targets", "read_list",
           "read_source", "stem"]
